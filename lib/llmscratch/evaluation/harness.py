"""Any course model as an lm-evaluation-harness model: `lm_eval.simple_evaluate(model=HarnessLM(lm), tasks=...)`
runs the field's standard benchmarks on it. The three requests are this package's functions."""

import torch

try:
    from lm_eval.api.model import LM
except ImportError as e:   # an optional dependency: the course's own evaluation needs none of it
    raise ImportError("llmscratch.evaluation.harness adapts course models to EleutherAI's lm-evaluation-harness: "
                      "pip install lm-eval==0.4.13 (make lab installs it)") from e

from .loglikelihood import LanguageModel, loglikelihood, loglikelihood_rolling


class HarnessLM(LM):
    def __init__(self, lm: LanguageModel, decode=None, end_token_id: int | None = None, max_gen_toks: int = 64):
        super().__init__()
        self.lm, self.decode, self.end_token_id, self.max_gen_toks = lm, decode, end_token_id, max_gen_toks

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return loglikelihood(self.lm, [r.args for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return loglikelihood_rolling(self.lm, [r.args[0] for r in requests])

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False):
        """Greedy, one request at a time, cut at the first stop string (the harness's `until`)."""
        if self.decode is None:
            raise ValueError("generate_until needs the tokenizer's decode: HarnessLM(lm, decode=tokenizer.decode)")
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            ids = self.lm.encode(context)[-self.lm.max_length:]
            idx = torch.tensor([ids], device=self.lm.device)
            n = min(kwargs.get("max_gen_toks", self.max_gen_toks), self.lm.max_length - len(ids))
            new = self.lm.model.generate(idx, n, temperature=0, eos_token_id=self.end_token_id)[0, len(ids):].tolist()
            text = self.decode(new)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
