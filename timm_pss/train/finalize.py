"""Rank 0's end of training: the budget table from the pools, each entry's validation accuracy and predicted
latency, then the run folder's Hub files (config.json + model.safetensors), results and plot."""
import logging
import time

from timm_pss.publish import save_hub_files
from timm_pss.latency import record_latency
from timm_pss.pss import evaluate_accuracy, finalize_budget_table
from timm_pss.reporting import format_results, plot_results, write_results
from timm_pss.supernet import find_supernet

from .loop import eta
from .run import TrainingRun

_logger = logging.getLogger('train_pss')


def finalize(run: TrainingRun) -> None:
    """Rank 0's end of training: the budget table from the pools (held-out choice, BN per entry), each entry's
    validation accuracy, predicted latencies, then the Hub files, results and plot in the run folder."""
    args, space, output_dir = run.args, run.space, run.output_dir
    _logger.info('Finalising: choosing each pool\'s subnet on the held-out slice, calibrating BN per entry')
    finalize_budget_table(run.eval_model, run.sampler, run.calib_loader, run.heldout_loader, top_k=args.pss_top_k,
                          calib_batches=args.pss_calib_batches)
    supernet = find_supernet(run.eval_model)
    metrics, start, entries = [], time.time(), len(supernet.budget_table)
    for index in range(entries):
        supernet.set_budget_entry(index)
        top1, top5 = evaluate_accuracy(supernet, run.val_loader)
        metrics.append({'top1': top1, 'top5': top5})
        _logger.info(f'Validating the budget table: entry {index + 1}/{entries} top-1 {top1:.2f}  '
                     f'ETA {eta(time.time() - start, index + 1, entries)}')
    supernet.set_table_metrics(metrics)
    if run.latency_table is not None:
        record_latency(supernet, run.latency_table)
    supernet.set_top_budget()  # config.json's input size is then that of the entry a loaded model serves
    save_hub_files(supernet, output_dir)  # timm's save_for_hf layout: config.json + model.safetensors
    rows = write_results(output_dir, supernet, space)
    data = 'the embedded digits' if not args.data_dir and not args.dataset else (args.dataset or args.data_dir)
    plot_results(rows, output_dir / 'accuracy_vs_flops.png', f'{args.model} (PSS) on {data}',
                 val_images=len(run.val_loader.dataset))
    print(f'\n{args.model}: budget table with validation accuracy\n{format_results(rows)}\n', flush=True)
    _logger.info(f'Wrote {output_dir}: model.safetensors + config.json (load with timm.create_model('
                 f'"local-dir:{output_dir}", pretrained=True), which serves its top entry; budget=... picks '
                 f'another), publish with python -m timm_pss.publish), results.csv/json, plot')
