"""Actuators: how the controller starts and stops worker services (the contract and its capabilities in
``base.py``; ``local.py`` and ``ansible.py`` carry it out)."""
