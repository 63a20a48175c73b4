

def test_plain_progress_prints_phase_periodic_and_done_lines():
    import io

    from llmslim.core.report import PlainProgress

    now = [0.0]
    out = io.StringIO()
    bar = PlainProgress(stream=out, every_s=30, clock=lambda: now[0])
    task = bar.add_task("calibrating", total=4)
    now[0] = 10.0
    bar.advance(task)  # 10 s after the last line: quiet
    now[0] = 31.0
    bar.advance(task)  # 31 s: a periodic line with the ETA from 2 of 4 in 31 s
    now[0] = 62.0
    bar.advance(task, 2)  # done
    lines = out.getvalue().splitlines()
    assert lines == [
        "calibrating: started (0/4)",
        "calibrating: 2/4, 31 s elapsed, ETA 31 s",
        "calibrating: 4/4 done in 62 s",
    ]


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys):
    from llmslim.core import report

    with report.progress() as bar:
        assert isinstance(bar, report.PlainProgress)  # pytest captures stderr: not a terminal
