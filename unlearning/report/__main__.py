"""`python -m unlearning.report`: the `unlearn-report` command."""

from unlearning.report.cli import main

main()
