"""`latentmix worker` (or `python -m latentmix.worker`): one worker process serving the
configured model's queue."""

import argparse
import logging

from latentmix.service.core.config import get_settings
from latentmix.worker.quiet import quiet_libraries
from latentmix.worker.runtime import run


def serve(*, burst: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    run(get_settings(), burst=burst)


def main() -> None:
    parser = argparse.ArgumentParser(prog="latentmix worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    serve(burst=parser.parse_args().burst)


if __name__ == "__main__":
    main()
