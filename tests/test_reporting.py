"""timm_pss.reporting: CSV rows and accuracy-vs-FLOPs plots written atomically, as train_pss.py and the benchmarks
write them."""
import csv

import pytest

from timm_pss.reporting import AccuracyCurve, plot_accuracy_vs_flops, plot_results, served_curve, write_csv

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_csv_columns_empty_cells_and_line_ends(tmp_path):
    rows = [dict(method='pss', seed=0, top1=71.25, extra='not a column'), dict(method='uniform', seed=1, top1=None)]
    write_csv(tmp_path / 'a.csv', rows, columns=['method', 'seed', 'top1', 'auc'], lineterminator='\n')
    assert (tmp_path / 'a.csv').read_bytes() == b'method,seed,top1,auc\npss,0,71.25,\nuniform,1,,\n'
    write_csv(tmp_path / 'b.csv', rows[1:])  # the first row's keys; the csv module's own line ends
    assert (tmp_path / 'b.csv').read_bytes() == b'method,seed,top1\r\nuniform,1,\r\n'


def test_a_failed_csv_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / 'results.csv'
    write_csv(path, [dict(entry=0, top1=50.0)])
    before = path.read_bytes()
    real_writerow = csv.DictWriter.writerow

    def fail_on_second_row(self, row):
        if row['entry'] == 1:
            raise OSError(28, 'No space left on device')
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, 'writerow', fail_on_second_row)
    with pytest.raises(OSError):
        write_csv(path, [dict(entry=0, top1=60.0), dict(entry=1, top1=70.0)])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['results.csv']


def test_plots_are_pngs_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / 'accuracy_vs_flops.png'
    rows = [dict(mflops=100.0, top1=60.0, heldout_top1=61.0, budget='100.00M'),
            dict(mflops=200.0, top1=59.0, heldout_top1=58.0, budget=''),
            dict(mflops=300.0, top1=70.0, heldout_top1=69.0, budget='300.00M')]
    plot_results(rows, path, 'budget table', val_images=359)
    before = path.read_bytes()
    assert before[:8] == PNG_MAGIC

    import matplotlib.figure

    def broken_savefig(self, *args, **kwargs):
        with open(args[0], 'wb') as f:
            f.write(b'half a png')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', broken_savefig)
    curves = [AccuracyCurve('PSS', [100, 200, 300], [60, 65, 70], std=[1, 2, 1]),
              AccuracyCurve('uniform', [100, 300], [58, 69])]
    with pytest.raises(OSError):
        plot_accuracy_vs_flops(path, curves, 'methods', xlabel='budget (MMACs)', figsize=(7, 4.5), marker_size=3,
                               legend_fontsize=8)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()
    plot_accuracy_vs_flops(path, curves, 'methods', xlabel='budget (MMACs)', figsize=(7, 4.5), marker_size=3,
                           legend_fontsize=8)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.read_bytes() != before


def test_the_plotted_curve_is_what_set_budget_serves():
    """A step: each served entry holds until the next served one; an entry no budget serves is not on it."""
    rows = [dict(mflops=1.0, top1=50.0, budget='1.00M'), dict(mflops=2.0, top1=40.0, budget=''),
            dict(mflops=3.0, top1=70.0, budget='3.00M'), dict(mflops=4.0, top1=65.0, budget='')]
    assert served_curve(rows) == ([1.0, 3.0, 4.0], [50.0, 70.0, 70.0])
