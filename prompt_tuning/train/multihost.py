"""Multi-process setup: `jax.distributed.initialize` from flags or the environment.

Flags: --coordinator_address host:port, --num_processes, --process_id (all three, or none).  Without flags,
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are read; on TPU pods and SLURM/Open MPI
clusters `--multi_host` lets JAX discover everything itself.  Single-process runs need nothing.
"""
import argparse
import os

import jax


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--multi_host", action="store_true",
                        help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM, MPI)")


def initialize(args: argparse.Namespace) -> None:
    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = args.num_processes if args.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if address:
        if num is None or pid is None:
            raise SystemExit("multi-host: --coordinator_address needs --num_processes and --process_id "
                             "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=address, num_processes=int(num), process_id=int(pid))
    elif args.multi_host:
        jax.distributed.initialize()
