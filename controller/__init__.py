"""The controller: signals -> policy (pure) -> placement -> actuators."""
