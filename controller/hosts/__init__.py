"""Hosts: what is known of each (its state, the roster that follows the inventory), where a new service goes, and
the per-host lock a scale run shares with the playbooks. Not actuators: the loop and the actuators both use them."""
