"""Per-document results of tofu_forget_loglik.yaml (loaded by the harness through `!function`)."""


def loglikelihood_results(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """The answer's summed log-likelihood, kept as is: the harness's own `perplexity` exponentiates the
    mean and overflows once unlearning pushes it below -709; and whether the answer is the greedy one."""
    loglikelihood, is_greedy = results[0]
    return {"loglikelihood": loglikelihood, "acc": int(is_greedy)}
