"""Command-line entry point (placeholder until the front end lands)."""


def main() -> int:
    return 0
