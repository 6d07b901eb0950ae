"""Redis plumbing: every key name, the Lua scripts, counters, the rejected-input log, the
delayed-job set, and the embedded server."""
