"""Batched sampling on the model's device: one call picks the next token of every scheduled row.

Per-row state lives in tensors indexed by the row a request holds in the running batch
(parameters, and counts of the tokens it generated, for the presence/frequency penalties), so a
step gathers it with one index instead of a Python loop over requests. Randomness uses the
exponential race (``argmax(p / E)``, ``E ~ Exp(1)``), which samples from ``p`` exactly and lets
each seeded request draw its noise from its own ``torch.Generator``: its tokens then depend on
its seed only, not on which other requests share the batch.

The order is vLLM's: logit bias, penalties, the grammar mask (constrained rows only), then for
random rows temperature, min-p, top-k and top-p. Each stage runs only when a row in the step
asks for it, so requests without these options pay nothing for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from services.decoder.constraints import GrammarState, allowed, bitmask_words
from services.decoder.params import SamplingParams
from services.decoder.types import TokenLogprob

ARGMAX_BLOCK = 256  # logits per block of argmax_rows (32k and GLM's 151,552 are multiples)


def argmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-1)`` of [rows, vocab], the same indices (first maximum; a row with
    NaN: its first NaN). On the CPU argmax's reduction is scalar, ~60 us a row of 32k logits:
    in blocks, the blocks' maxima (amax is vectorized), the first block holding the row's
    maximum (argmax of that max, NaN propagating as amax does), then argmax inside it alone."""
    rows, vocab = scores.shape
    block = math.gcd(vocab, ARGMAX_BLOCK)
    if scores.device.type != "cpu" or block < ARGMAX_BLOCK // 8:
        return scores.argmax(dim=-1)  # GPUs' argmax is one fast kernel already
    blocks = scores.view(rows, vocab // block, block)
    first = blocks.amax(dim=-1).argmax(dim=-1)
    inside = blocks.gather(1, first.view(rows, 1, 1).expand(rows, 1, block)).argmax(dim=-1)
    return first * block + inside.view(rows)


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


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """vLLM's (from CTRL): the logit of every token seen in the prompt or the output is divided
    by the penalty where positive and multiplied by it where negative."""
    penalty = penalty[:, None]
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def mask_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """-inf for tokens less likely than min_p times the most likely one."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
    return logits.masked_fill(probs < threshold, float("-inf"))


class Sampler:
    def __init__(self, max_rows: int, vocab_size: int, device: torch.device) -> None:
        self.device = device
        self.counts = torch.zeros(max_rows, vocab_size, dtype=torch.float32, device=device)
        self.temperature = torch.zeros(max_rows, device=device)
        self.top_p = torch.ones(max_rows, device=device)
        self.top_k = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.presence = torch.zeros(max_rows, device=device)
        self.frequency = torch.zeros(max_rows, device=device)
        self.min_p = torch.zeros(max_rows, device=device)
        self.repetition = torch.ones(max_rows, device=device)
        self.bias = torch.zeros(max_rows, vocab_size, device=device)
        self.prompt_tokens = torch.zeros(max_rows, vocab_size, dtype=torch.bool, device=device)
        self.mask_words = bitmask_words(max_rows, vocab_size)  # on the CPU, where masks are made
        self.params: list[SamplingParams] = [SamplingParams()] * max_rows
        self.generators: list[torch.Generator | None] = [None] * max_rows
        self.shared_generator = torch.Generator(device=device)
        self.shared_generator.seed()

    def assign(self, row: int, params: SamplingParams, prompt: Sequence[int] = ()) -> None:
        """Give a row to a newly admitted request (its prompt ids: the repetition penalty's)."""
        self.params[row] = params
        self.counts[row].zero_()
        self.min_p[row] = params.min_p
        self.repetition[row] = params.repetition_penalty
        self.bias[row].zero_()
        if params.logit_bias:
            ids, values = zip(*params.logit_bias, strict=True)
            self.bias[row, list(ids)] = torch.tensor(values, device=self.device)
        self.prompt_tokens[row].zero_()
        if params.repetition_penalty != 1:
            self.prompt_tokens[row, list(prompt)] = True
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
        self,
        logits: torch.Tensor,
        rows: list[int],
        grammars: Sequence[GrammarState | None] = (),
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """The next token of each row (logits [len(rows), vocab], fp32), and its logprobs where
        asked; ``grammars``: each row's constraint, if any, which the token then advances.
        Logprobs are those of the model's own distribution, before bias, penalties, grammar,
        temperature and top-k/top-p, as vLLM reports them."""
        params = [self.params[r] for r in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        scores = self._adjust(logits, params, index)
        constrained = [(i, g) for i, g in enumerate(grammars) if g is not None and g.active]
        if constrained:
            scores = self._constrain(scores, constrained)
        tokens = argmax_rows(scores)
        if not all(p.greedy for p in params):
            tokens = torch.where(
                self.temperature[index] > 0, self._draw(scores, rows, index), tokens
            )
        if any(_penalized(p) for p in params):  # only penalties read the counts
            self.counts.index_put_(
                (index, tokens), torch.ones_like(tokens, dtype=torch.float32), accumulate=True
            )
        token_ids = tokens.tolist()
        for grammar, token in zip(grammars, token_ids, strict=False):
            if grammar is not None:
                grammar.advance(token)
        return token_ids, self._logprobs(logits, tokens, token_ids, params)

    def _adjust(
        self, logits: torch.Tensor, params: list[SamplingParams], index: torch.Tensor
    ) -> torch.Tensor:
        """Logit bias, then the repetition, presence and frequency penalties."""
        scores = logits
        if any(p.logit_bias for p in params):
            scores = scores + self.bias[index]
        if any(p.repetition_penalty != 1 for p in params):
            seen = self.prompt_tokens[index] | (self.counts[index] > 0)
            scores = apply_repetition_penalty(scores, seen, self.repetition[index])
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            scores = apply_penalties(
                scores, self.counts[index], self.presence[index], self.frequency[index]
            )
        return scores

    def _constrain(
        self, scores: torch.Tensor, constrained: list[tuple[int, GrammarState]]
    ) -> torch.Tensor:
        """-inf for the tokens each constrained row's grammar forbids; other rows untouched."""
        words = self.mask_words[: len(constrained)]
        for k, (_, grammar) in enumerate(constrained):
            grammar.fill_mask(words[k])
        ok = allowed(words.to(self.device), scores.shape[-1])
        at = torch.tensor([i for i, _ in constrained], dtype=torch.long, device=self.device)
        return scores.index_put((at,), scores[at].masked_fill(~ok, float("-inf")))

    def _draw(self, scores: torch.Tensor, rows: list[int], index: torch.Tensor) -> torch.Tensor:
        params = [self.params[r] for r in rows]
        temperature = self.temperature[index].clamp_min(1e-5)
        scores = scores / temperature[:, None]
        if any(p.min_p > 0 for p in params):
            scores = mask_min_p(scores, self.min_p[index])
        if any(p.top_k or p.top_p < 1 for p in params):
            scores = mask_top_k_top_p(scores, self.top_k[index], self.top_p[index])
        probs = scores.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.shared_generator)
        for i, row in enumerate(rows):  # only seeded requests: their own reproducible stream
            generator = self.generators[row]
            if generator is not None:
                noise[i].exponential_(generator=generator)
        return argmax_rows(probs / noise)

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


def _penalized(params: SamplingParams) -> bool:
    """Whether a row's sampling reads the counts of its generated tokens."""
    return params.repetition_penalty != 1 or bool(
        params.presence_penalty or params.frequency_penalty
    )
