"""(e) Fork safety: a connection opened in the gunicorn master before fork
(``--preload`` + a query at import) is neither used nor closed by the workers."""

import time

import pytest

from . import servers

pytestmark = pytest.mark.servers

REQUESTS = 100


def test_preloaded_master_connection_survives_workers(pg_database, variant, unique_name, tmp_path):
    pid_file = tmp_path / "import_pid"
    env = pg_database.env(variant, unique_name, EXAMPLE_QUERY_AT_IMPORT="1",
                          EXAMPLE_IMPORT_PID_FILE=pid_file)
    with servers.Server("sync", env, workers=2, preload=True) as server:
        master_pid = int(pid_file.read_text())
        sessions_before = servers.pg_pids(pg_database.name, unique_name)
        result = servers.run_load(server.port, "/pid/", clients=4, total=REQUESTS)
        time.sleep(0.5)  # a Terminate sent by a worker takes effect at once; be generous
        sessions_after = dict((pid, state) for pid, state, _ in
                              servers.pg_sessions(pg_database.name, unique_name))
        stderr = server.stderr()
    served_by = {int(b) for b in result.bodies()}
    evidence = (f"master session {master_pid}; sessions before load {sorted(sessions_before)}, "
                f"after {sessions_after}; requests served by {sorted(served_by)}; {result.summary()}\n"
                f"server stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert master_pid in sessions_before, evidence
    assert len(result.responses) == REQUESTS, evidence
    assert not result.non_200, evidence
    assert master_pid not in served_by, f"a worker used the master's connection: {evidence}"
    assert master_pid in sessions_after, f"the master's session was terminated: {evidence}"
    assert sessions_after[master_pid] == "idle", evidence
