"""Sources: where the controller's signals come from (the Redis fleet, the account balance), behind one contract
(``base.py``) that the simulator's source implements too; ``windows.py`` turns what a source reads into Signals."""
