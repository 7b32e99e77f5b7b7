"""Batched sampling on the model's device: one call picks the next token of every scheduled row.

Per-row state lives in tensors indexed by the row a request holds in the running batch
(parameters, and counts of the tokens it generated, for the presence/frequency penalties), so a
step gathers it with one index instead of a Python loop over requests. Randomness uses the
exponential race (``argmax(p / E)``, ``E ~ Exp(1)``), which samples from ``p`` exactly and lets
each seeded request draw its noise from its own ``torch.Generator``: its tokens then depend on
its seed only, not on which other requests share the batch.
"""

from __future__ import annotations

import torch

from services.decoder.types import SamplingParams, TokenLogprob


def mask_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """-inf outside each row's top_k (0 = all) and outside its top_p nucleus (the smallest set
    of most likely tokens whose mass reaches top_p, after top_k; the top token always stays)."""
    vocab = logits.shape[-1]
    ordered, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)
    ordered = ordered.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    ordered = ordered.masked_fill(mass_before >= top_p[:, None], float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, ordered)


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI's penalties over the tokens generated so far: minus frequency * count, minus
    presence once a token appeared."""
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0)


class Sampler:
    def __init__(self, max_rows: int, vocab_size: int, device: torch.device) -> None:
        self.device = device
        self.counts = torch.zeros(max_rows, vocab_size, dtype=torch.float32, device=device)
        self.temperature = torch.zeros(max_rows, device=device)
        self.top_p = torch.ones(max_rows, device=device)
        self.top_k = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.presence = torch.zeros(max_rows, device=device)
        self.frequency = torch.zeros(max_rows, device=device)
        self.params: list[SamplingParams] = [SamplingParams()] * max_rows
        self.generators: list[torch.Generator | None] = [None] * max_rows
        self.shared_generator = torch.Generator(device=device)
        self.shared_generator.seed()

    def assign(self, row: int, params: SamplingParams) -> None:
        """Give a row to a newly admitted request."""
        self.params[row] = params
        self.counts[row].zero_()
        self.temperature[row] = params.temperature
        self.top_p[row] = params.top_p
        self.top_k[row] = params.top_k
        self.presence[row] = params.presence_penalty
        self.frequency[row] = params.frequency_penalty
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        self.generators[row] = generator

    def sample(
        self, logits: torch.Tensor, rows: list[int]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """The next token of each row (logits [len(rows), vocab], fp32), and its logprobs where
        asked. Logprobs are those of the model's own distribution, before penalties,
        temperature and top-k/top-p, as vLLM reports them."""
        params = [self.params[r] for r in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        scores = logits
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            scores = apply_penalties(
                scores, self.counts[index], self.presence[index], self.frequency[index]
            )
        tokens = scores.argmax(dim=-1)
        if not all(p.greedy for p in params):
            tokens = torch.where(
                self.temperature[index] > 0, self._draw(scores, rows, index), tokens
            )
        self.counts.index_put_(
            (index, tokens), torch.ones_like(tokens, dtype=torch.float32), accumulate=True
        )
        token_ids = tokens.tolist()
        return token_ids, self._logprobs(logits, tokens, token_ids, params)

    def _draw(self, scores: torch.Tensor, rows: list[int], index: torch.Tensor) -> torch.Tensor:
        params = [self.params[r] for r in rows]
        temperature = self.temperature[index].clamp_min(1e-5)
        scores = scores / temperature[:, None]
        if any(p.top_k or p.top_p < 1 for p in params):
            scores = mask_top_k_top_p(scores, self.top_k[index], self.top_p[index])
        probs = scores.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.shared_generator)
        for i, row in enumerate(rows):  # only seeded requests: their own reproducible stream
            generator = self.generators[row]
            if generator is not None:
                noise[i].exponential_(generator=generator)
        return (probs / noise).argmax(dim=-1)

    def _logprobs(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        token_ids: list[int],
        params: list[SamplingParams],
    ) -> list[TokenLogprob | None]:
        wanted = [p.logprobs for p in params]
        if not any(wanted):
            return [None] * len(params)
        logprobs = logits.log_softmax(dim=-1)
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
        top_values, top_ids = logprobs.topk(max(p.top_logprobs for p in params), dim=-1)
        values, ids = top_values.tolist(), top_ids.tolist()
        out: list[TokenLogprob | None] = []
        for i, p in enumerate(params):
            if not p.logprobs:
                out.append(None)
                continue
            k = p.top_logprobs
            top = tuple(zip(ids[i][:k], values[i][:k], strict=True))
            out.append(TokenLogprob(token_id=token_ids[i], logprob=chosen[i], top_logprobs=top))
        return out
