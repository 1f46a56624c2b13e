"""The stack and its constructs (state, pools, app, monitoring) and the pure wiring planner."""
