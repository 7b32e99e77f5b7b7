"""The device side of an engine step: runs a scheduler's ``Plan`` through the model.

It owns what lives on the model's device per running row: the slot table (the flat cache
slot of every logical token of the request holding each row), each request's prompt
(``packing.DevicePrompt``) and the sampler's state. ``run`` sets up newly admitted rows and
newly taken cache blocks, packs the step into one forward (packing.py) and samples the next
token of every request the plan names.
"""

from __future__ import annotations

from typing import cast

import torch

from services.common.errors import InvalidInput
from services.decoder.constraints import GrammarState
from services.decoder.cuda_graphs import DecodeGraphs
from services.decoder.kv_cache import KVCache, longs
from services.decoder.model import Glm4ForCausalLM
from services.decoder.packing import DevicePrompt, Segment, pack, splice
from services.decoder.sampling import Sampler
from services.decoder.scheduler import EngineLimits, Plan
from services.decoder.sequence import Sequence
from services.decoder.types import GenerateRequest, TokenLogprob


class ModelRunner:
    def __init__(self, model: Glm4ForCausalLM, cache: KVCache, limits: EngineLimits) -> None:
        self.model = model
        self.cache = cache
        self.max_model_len = limits.max_model_len
        self.device = model.device
        self.vocab_size = int(model.config.vocab_size)
        self.hidden_size = int(model.config.hidden_size)
        self.position_axes = model.config.position_axes  # 3 for mRoPE (t, h, w), else 1
        rows = limits.max_running_requests
        self.sampler = Sampler(rows, self.vocab_size, self.device)
        self.slot_table = torch.zeros(
            rows, limits.max_model_len, dtype=torch.long, device=self.device
        )
        self.graphs: DecodeGraphs | None = None

    def use_cuda_graphs(self) -> None:
        """Run decode-only steps as CUDA graphs per batch bucket (cuda_graphs.py)."""
        self.graphs = DecodeGraphs(self.model, self.cache, self.max_model_len)

    def validate(self, request: GenerateRequest) -> None:
        """Reject what this model cannot read. Reads only fixed settings: any thread may."""
        if min(request.input_ids) < 0 or max(request.input_ids) >= self.vocab_size:
            raise InvalidInput(f"input_ids must be in [0, {self.vocab_size})")
        axes = request.positions.axes if request.positions else 1
        if axes not in (1, self.position_axes):
            raise InvalidInput(
                f"this model takes 1-D positions (one row per token), got {axes} rows"
            )
        for segment in request.segments:
            if segment.embeddings.shape[1] != self.hidden_size:
                raise InvalidInput(
                    f"segment at offset {segment.offset} has width {segment.embeddings.shape[1]}; "
                    f"the decoder's hidden size is {self.hidden_size}"
                )
            if not segment.embeddings.is_floating_point():
                raise InvalidInput("segment embeddings must be floating point")
        bias_ids = [t for t, _ in request.sampling.logit_bias]
        if bias_ids and max(bias_ids) >= self.vocab_size:
            raise InvalidInput(f"logit_bias token ids must be in [0, {self.vocab_size})")
        start = request.constraint.start_after_token_id if request.constraint else None
        if start is not None and start >= self.vocab_size:
            raise InvalidInput(f"start_after_token_id must be in [0, {self.vocab_size})")

    @torch.inference_mode()
    def run(self, plan: Plan) -> tuple[list[int], list[TokenLogprob | None]]:
        """The token (and logprob, where asked) of each of ``plan.to_sample()``'s requests."""
        for seq in plan.admitted:
            self._set_up(seq)
        for seq, first in plan.new_blocks:
            self._map(seq, first)
        ids, positions, batch = pack(plan, self.slot_table, self.position_axes)
        sampled, index = plan.to_sample()
        # a decode-only step samples every row in order: the graphs' logits are those rows'
        logits = None
        if self.graphs is not None and not plan.prefills:
            logits = self.graphs.logits(ids, positions, batch)
        if logits is None:
            embeds = splice(plan, self.model.embed(ids))
            hidden = self.model(None, positions, batch, self.cache, inputs_embeds=embeds)
            if not sampled:
                return [], []
            # a decode-only step samples every row, in order: no gather
            rows = hidden if len(index) == hidden.shape[0] else hidden[longs(index, self.device)]
            logits = self.model.logits(rows)
        grammars = [cast(GrammarState | None, s.grammar) for s in sampled]
        return self.sampler.sample(logits, [s.row for s in sampled], grammars)

    def _set_up(self, seq: Sequence) -> None:
        """A newly admitted request's row: its sampler state and its prompt on the device."""
        request = seq.request
        self.sampler.assign(seq.row, request.sampling, request.input_ids)
        segments = tuple(
            Segment(s.offset, s.offset + s.length, s.embeddings.to(self.device, self.model.dtype))
            for s in request.segments
        )
        rows = request.positions.rows if request.positions else (range(seq.prompt_len),)
        # [axes, prompt]: 1-D positions (text only) fill every axis of an mRoPE model alike
        positions = longs(rows, self.device).expand(self.position_axes, -1)
        seq.inputs = DevicePrompt(longs(request.input_ids, self.device), positions, segments)

    def _map(self, seq: Sequence, first: int) -> None:
        """Point the request's slot-table row at the slots of its blocks from ``first`` on."""
        size = self.cache.block_size
        lo = first * size
        end = min(len(seq.blocks) * size, self.max_model_len)
        self.slot_table[seq.row, lo:end] = self.cache.slots(seq.blocks[first:], end - lo)
