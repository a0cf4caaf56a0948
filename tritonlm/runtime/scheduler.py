"""Continuous batching: which requests run this step, and with how many tokens. No torch.

Each step the scheduler hands the runner ``{request_id: num_tokens}`` under a token budget.
Running requests come first: decodes (one token each), then unfinished prefills (the next
chunk of the prompt), each group oldest first. Waiting requests are admitted after them, FCFS, with whatever
budget is left (their prompts are prefilled in chunks that share steps with the decodes).
When a running request needs a block and none is free, the newest running sequence of the
user request (group) holding the most running sequences is preempted (with one sequence per
group: the newest request): its blocks are freed and it goes back to the front of the queue, to
be recomputed (from the prefix cache where its blocks survive).

No user request monopolises the batch: when the request at the head of the queue finds no free
seat (``max_num_seqs``) or no free blocks, and another group holds at least two more running
sequences than the head's group, that group's newest sequence yields its place and waits
right behind the head. A waiting request that cannot be admitted while its group already runs
does not hold the queue: the requests of other groups behind it are tried in order. So with one
client's ``n=64`` filling the batch, another client's request is admitted at the next step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.outputs import FinishReason
from tritonlm.runtime.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    num_scheduled_tokens: dict[str, int]  # request_id -> new tokens this step, in batch order
    requests: dict[str, Request]  # the same keys
    preempted: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    def samples(self, request: Request) -> bool:
        """Whether this step reaches the end of the request's tokens, so a token is sampled for it.

        The one rule of who samples (the runner's logits rows, the grammar masks and the sampler
        all follow it). Valid until the step's tokens are marked computed.
        """
        return request.num_computed_tokens + self.num_scheduled_tokens[request.request_id] == request.num_tokens

    def sampling_requests(self) -> list[Request]:
        """The requests that sample this step, in batch order (the order of the logits rows)."""
        return [r for r in self.requests.values() if self.samples(r)]


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: oldest first
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: dict[str, int] = {}
        requests: dict[str, Request] = {}
        preempted: list[str] = []
        bm = self.block_manager

        # decodes first, then prefill chunks (an older request still prefilling must not
        # starve the decodes behind it); each group oldest first
        for request in sorted(self.running, key=lambda r: r.num_tokens - r.num_computed_tokens > 1):
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this step
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not bm.append_slots(request.request_id, request.num_computed_tokens + num_new):
                victim = self._newest_of_largest_group()
                self.running.remove(victim)
                self._preempt(victim)
                preempted.append(victim.request_id)
                budget += scheduled.pop(victim.request_id, 0)
                requests.pop(victim.request_id, None)
                if victim is request:
                    break
            else:
                scheduled[request.request_id] = num_new
                requests[request.request_id] = request
                budget -= num_new

        if not preempted:
            self._admit(budget, scheduled, requests)
        return SchedulerOutput(scheduled, requests, preempted)

    def _admit(self, budget: int, scheduled: dict[str, int], requests: dict[str, Request]) -> None:
        """Admit waiting requests in queue order while seats, blocks and ``budget`` last.

        A request that cannot be admitted stops admission, unless its group already runs
        sequences: then its group is passed over for this step and the requests behind it are
        tried (so the rest of one ``n=64`` request cannot hold the queue's head against others).
        """
        bm = self.block_manager
        passed_over: set[str] = set()
        running_groups = {r.group_id for r in self.running}
        i = 0
        while i < len(self.waiting) and budget > 0:
            request = self.waiting[i]
            if request.group_id in passed_over:
                i += 1
                continue
            admitted = False
            ready = request.waits_for is None or request.waits_for.is_prefilled or request.waits_for.is_finished
            if ready:
                request.waits_for = None
                if len(self.running) < self.max_num_seqs or self._yield_place_to(request, i + 1, scheduled, requests):
                    budget = self.max_num_batched_tokens - sum(scheduled.values())
                    cached = bm.find_cached_prefix(request.token_ids)
                    num_cached = len(cached) * bm.block_size
                    num_new = min(request.num_tokens - num_cached, budget)
                    if bm.allocate(request.request_id, cached, num_cached + num_new):
                        admitted = True
                    elif self._yield_place_to(request, i + 1, scheduled, requests):
                        budget = self.max_num_batched_tokens - sum(scheduled.values())
                        continue  # try again with the freed blocks
            if not admitted:
                if request.group_id not in running_groups:
                    return
                passed_over.add(request.group_id)
                i += 1
                continue
            del self.waiting[i]
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            running_groups.add(request.group_id)
            scheduled[request.request_id] = num_new
            requests[request.request_id] = request
            budget -= num_new

    def _running_per_group(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request in self.running:
            counts[request.group_id] = counts.get(request.group_id, 0) + 1
        return counts

    def _newest_of_largest_group(self) -> Request:
        """The preemption victim: the newest running sequence of the group running the most."""
        counts = self._running_per_group()
        largest = max(counts.values())
        return next(r for r in reversed(self.running) if counts[r.group_id] == largest)

    def _yield_place_to(
        self, head: Request, queue_position: int, scheduled: dict[str, int], requests: dict[str, Request]
    ) -> bool:
        """Preempt the newest sequence of a group holding at least two more running sequences
        than ``head``'s group (it waits at ``queue_position``, right behind ``head``); False if none does. Afterwards
        the victim's group still holds at least as many as ``head``'s, so the victim, once at
        the head, never takes the seat back. Unschedules the victim if it was scheduled."""
        if not self.running:
            return False
        counts = self._running_per_group()
        victim = self._newest_of_largest_group()
        if counts[victim.group_id] < counts.get(head.group_id, 0) + 2:
            return False
        self.running.remove(victim)
        scheduled.pop(victim.request_id, None)
        requests.pop(victim.request_id, None)
        self._preempt(victim, queue_position=queue_position)
        return True

    def _preempt(self, request: Request, queue_position: int = 0) -> None:
        """Free ``request``'s blocks and requeue it (removed from ``running`` by the caller)."""
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.insert(queue_position, request)
        self.num_preemptions += 1

    def mark_computed(self, output: SchedulerOutput) -> None:
        """Advance every scheduled request past the tokens the runner just stored."""
        for request_id, num_tokens in output.num_scheduled_tokens.items():
            request = output.requests[request_id]
            request.num_computed_tokens += num_tokens
            self.block_manager.register_full_blocks(request_id, request.token_ids, request.num_computed_tokens)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Finish a request wherever it is (running, waiting or already finished: then a no-op)."""
        if request.status is RequestStatus.FINISHED:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.block_manager.free(request.request_id)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
