"""Actor processes, the supervisor that runs them, and their launchers."""
