"""One run end to end: its configuration, run folders, planning, the command line."""
