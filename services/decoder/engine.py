"""The decoder engine: continuous batching over a paged KV cache. Pure logic, no I/O, no gRPC.

It joins the scheduler (scheduler.py: which requests run each step, and the cache blocks they
hold; pure Python) to the model runner (model_runner.py: the forward and the sampler on the
model's device). The engine is driven from one thread (engine_thread.py); nothing here is
thread-safe, except ``validate`` and ``prepare``, which read only fixed settings.
"""

from __future__ import annotations

from services.common.errors import InvalidInput
from services.decoder.constraints import ConstraintCompiler
from services.decoder.kv_cache import KVCache
from services.decoder.model import Glm4ForCausalLM
from services.decoder.model_runner import ModelRunner
from services.decoder.scheduler import EngineLimits, EngineStats, Scheduler
from services.decoder.sequence import Pending
from services.decoder.types import GenerateOutput, GenerateRequest


class Engine:
    def __init__(
        self,
        model: Glm4ForCausalLM,
        cache: KVCache,
        limits: EngineLimits,
        eos_token_ids: tuple[int, ...] = (),
        constraints: ConstraintCompiler | None = None,
    ) -> None:
        self.model = model
        self.constraints = constraints
        self.cache = cache
        self.limits = limits
        self.eos_token_ids = frozenset(eos_token_ids)
        self.runner = ModelRunner(model, cache, limits)
        self.scheduler = Scheduler(limits, cache.blocks, cache.block_size, self.eos_token_ids)
        self.device = self.runner.device
        self.vocab_size = self.runner.vocab_size
        self.hidden_size = self.runner.hidden_size

    def validate(self, request: GenerateRequest) -> None:
        """Reject what can never run. Reads only fixed settings, so any thread may call it."""
        self.scheduler.validate(request)
        self.runner.validate(request)

    def prepare(self, request: GenerateRequest) -> Pending:
        """Validate a request, hash it for the prefix cache and compile its constraint. Reads
        only fixed settings, so any thread may call it: hashing a large image's embeddings or
        compiling a grammar takes milliseconds that the engine thread, decoding for everyone,
        should not spend."""
        self.validate(request)
        grammar = None
        if request.constraint is not None:
            if self.constraints is None:
                raise InvalidInput("this decoder has no tokenizer to compile constraints with")
            grammar = self.constraints.matcher(request.constraint)
        return Pending(request, self.cache.prefix_hashes(request), grammar)

    def add(self, request: GenerateRequest | Pending) -> None:
        """Queue a request; Overloaded when ``max_waiting_requests`` already wait."""
        self.scheduler.add(request if isinstance(request, Pending) else self.prepare(request))

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def stats(self) -> EngineStats:
        return self.scheduler.stats()

    def step(self) -> list[GenerateOutput]:
        plan = self.scheduler.schedule()
        if not plan:
            return []
        tokens, logprobs = self.runner.run(plan)
        return self.scheduler.postprocess(plan, tokens, logprobs)
