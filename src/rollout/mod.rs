//! The rollout planner: a pure, deterministic state machine deciding which pods to
//! replace next, whether a gate passed, and when to roll back.
