"""The hub's mode seam: each mode's work folders, GPU board and usage recovery."""

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime

from gpuhub.core.gpus import Gpu, to_json
from gpuhub.core.settings import validate
from gpuhub.core.usage import UsageJournal
from gpuhub.hub import hubmodes
from gpuhub.services.workfolders import work_folder
from harness import ROOT

SWARM = {"MODE": "swarm", "REGISTRY": "registry.example.org:5000/lab",
         "SWARM_HOMES": "/srv/nfs/homes"}
GPU = Gpu("0", "GPU-aaaa", "Tesla T4", 15360)


def test_each_mode_has_its_own_work_folders():
    compose, swarm = hubmodes.hub_mode(validate({})), hubmodes.hub_mode(validate(SWARM))
    assert isinstance(compose, hubmodes.ComposeHub)
    assert isinstance(swarm, hubmodes.SwarmHub)
    assert work_folder(validate({}), "bob.smith").volume == "gpuhub-home-bob-2esmith"
    assert work_folder(validate(SWARM), "bob.smith").on_nodes == "/srv/nfs/homes/bob-2esmith"


def test_the_compose_board_reads_the_inventory_and_the_labs_at_each_read(tmp_path):
    inventory = tmp_path / "gpus.json"
    containers = [{"Id": "a" * 64, "Labels": {"gpuhub.user": "alice", "gpuhub.gpus": GPU.uuid,
                                               "gpuhub.profile": "gpu1"}}]
    read, every = hubmodes.hub_mode(validate({"GPU_SAMPLE_INTERVAL": "7"})).board_source(
        list_labs=lambda: containers, inventory_file=inventory)
    assert every == 7.0
    assert read().rows == []  # no inventory yet: no GPU rows, and no error
    inventory.write_text(to_json([GPU]))
    board = read()
    assert [r["held_by"] for r in board.rows] == [["alice"]]
    assert board.labs_per_profile == {"gpu1": 1}


def test_swarm_mode_leaves_usage_records_to_the_hubs_own_starts_and_stops(tmp_path):
    journal = tmp_path / "usage.jsonl"
    UsageJournal(journal).started("a" * 64, "alice", "gpu1", [GPU.uuid], datetime.now(UTC))
    before = journal.read_bytes()

    class NoDocker:
        def __getattr__(self, name):
            raise AssertionError(f"swarm mode asked Docker for {name}")

    hubmodes.hub_mode(validate(SWARM)).recover_usage(journal, logging.getLogger("t"),
                                                     client=NoDocker())
    assert journal.read_bytes() == before


def test_the_board_command_runs_as_a_program_and_names_what_failed(tmp_path):
    # `invoke gpus` runs it in the hub: importing the metrics twice (as __main__ and as
    # gpuhub.hub.telemetry) once made every call fail with "Duplicated timeseries".
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run([sys.executable, "-m", "gpuhub.hub.hubmodes"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: could not read the GPUs: "), done.stderr
    assert "no-docker.sock" in done.stderr or "Connection" in done.stderr, done.stderr
    assert "Duplicated" not in done.stderr
