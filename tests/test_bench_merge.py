"""The merge benchmark runs and its exactness check holds (speed is reported, not asserted)."""

from experiments import bench_merge


def test_bench_merge_small(tmp_path):
    result = bench_merge.main(
        ["--sizes", "128", "256", "--repeats", "1", "--json", str(tmp_path / "m.json")]
    )
    assert set(result["summary"]) == {"speedup_vs_peft_d256", "max_rel_error"}
    assert result["summary"]["max_rel_error"] < 1e-5
    assert (tmp_path / "m.json").exists()
