"""Campaign runs: schedule, audience, pacing, outcomes, and the dry run."""
