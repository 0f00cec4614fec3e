"""Lab hosts for tests, demos and benchmarks: network namespaces with their own sshd on this machine."""
