"""benchmarks/faults.py: the catalogue runs its in-process cases and the table shows case, outcome and files left
(the whole catalogue, with its three subprocess cases, is the script's run; the tests of issue 15 assert each one)."""

from benchmark_scripts import load_benchmark


def test_in_process_fault_cases_hold_and_make_a_table(tmp_path):
    faults = load_benchmark("faults")
    quick = [
        entry
        for entry in faults.CATALOGUE
        if entry[1]
        in ("cases x and x_uncertainty collide", "an empty folder among the inputs", "empty checkpoint", '-i ""')
    ]
    assert len(quick) == 4
    faults.CATALOGUE[:] = quick  # the module's own list: this test's copy of the module only
    rows = faults.run_catalogue(tmp_path)
    assert [row["ok"] for row in rows] == [True] * 4, rows
    assert rows[1]["files_left"] == ["scan.nii.gz"]
    table = faults.table(rows)
    assert table.splitlines()[0] == "| # | case | outcome | files left | ok |" and len(table.splitlines()) == 6
