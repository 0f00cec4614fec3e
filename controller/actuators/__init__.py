"""Actuators: how the controller starts and stops worker services (see controller/actuator.py)."""
