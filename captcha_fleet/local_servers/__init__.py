"""Throwaway local servers (Redis, Sentinel, a TLS CA) that the demo, the replay, the lab and the tests start."""
