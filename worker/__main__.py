"""`python -m worker`: one worker process serving the configured model's queue."""

import argparse
import logging

from service.config import get_settings
from worker.runtime import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(get_settings(), burst=args.burst)


if __name__ == "__main__":
    main()
