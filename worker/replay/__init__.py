"""Replays: the whole engine (real worker processes, the scheduler, local gateways) run
on a canonical event history at an accelerated simulated clock (`worker/clock.py`), and
what it did, summed up per rule: `pushrec demo` on the shipped sample, `pushrec replay` on
a shop's own history."""
