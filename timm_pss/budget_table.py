"""Budget tables: the best known subnet per FLOPs budget, as a value type with its JSON form.

A `BudgetTable` is a tuple of `BudgetEntry` (flops, subnet, measured metrics) for a space's channel groups, plus
table-wide `info`; `select` / `choose` pick the entry `set_budget` serves. How a supernet stores its table and the
per-entry BN statistics in its state dict is `timm_pss.budget_storage`.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from .spaces import SearchSpace, Subnet
from .units import FlopsLike, budget_label, describe_value, format_flops, parse_flops, parse_latency

__all__ = ['BudgetChoice', 'BudgetEntry', 'BudgetTable', 'LATENCY_METRIC', 'SELECTION_METRIC', 'TABLE_FORMAT']

TABLE_FORMAT = 'timm_pss.budget_table/1'
LATENCY_METRIC = 'latency_ms'  # the budget-table metric that set_budget(latency_ms=...) selects by
SELECTION_METRIC = 'heldout_top1'  # set_budget's choice among the entries that fit a budget


def _listed(values: Sequence, limit: int = 5) -> str:
    """`values` for an error message: at most `limit` of them, then how many more."""
    shown = ', '.join(str(v) for v in values[:limit])
    return f'[{shown}, ... ({len(values) - limit} more)]' if len(values) > limit else f'[{shown}]'


@dataclass(frozen=True)
class BudgetEntry:
    """One budget-table entry: a subnet, its FLOPs, and what was measured for it (e.g. top1, score)."""
    flops: int
    subnet: Subnet
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self):
        # a NaN would win or lose every comparison in set_budget's choice, and a table holding one could be saved
        # but not loaded again: refuse it where entries are made
        bad = [k for k, v in self.metrics.items()
               if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)]
        if bad:
            raise ValueError(f'metric {bad[0]!r} is {self.metrics[bad[0]]!r}; metrics must be finite numbers')

    def to_dict(self) -> dict:
        return {'flops': self.flops, 'subnet': self.subnet.to_dict(), 'metrics': dict(self.metrics)}


class BudgetChoice(NamedTuple):
    """What `BudgetTable.choose` picked for a budget: the entry, its row, and whether the budget was below every
    entry (only possible with strict=False: the smallest entry stands in, and the caller warns)."""
    index: int
    entry: BudgetEntry
    below_smallest: bool


class BudgetTable(Sequence[BudgetEntry]):
    """Budget-table entries for a space with the given channel group names.

    The order is the storage order (row i of every per-entry BN buffer belongs to entry i) and is never changed;
    `fill_budget_table` stores entries by ascending FLOPs. `info` holds table-wide facts as strings, e.g. the device
    the entries' `latency_ms` were predicted for.
    """

    def __init__(self, group_names: Sequence[str], entries: Sequence[BudgetEntry] = (),
                 info: Optional[Mapping[str, str]] = None):
        self.group_names = tuple(group_names)
        self.entries: Tuple[BudgetEntry, ...] = tuple(entries)
        self.info: Dict[str, str] = {str(k): str(v) for k, v in (info or {}).items()}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        return self.entries[i]

    def __iter__(self) -> Iterator[BudgetEntry]:
        return iter(self.entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, BudgetTable) and ((self.group_names, self.entries, self.info)
                                                   == (other.group_names, other.entries, other.info))

    def select(self, budget: Optional[FlopsLike] = None, strict: bool = True, *,
               latency_ms: Union[None, float, str] = None) -> Tuple[int, BudgetEntry]:
        """(index, entry): the best entry with FLOPs <= `budget`, or with recorded `latency_ms` <= `latency_ms`
        (exactly one of the two). Best: the highest `heldout_top1` (accuracy on held-out training data, recorded by
        finalisation), so an entry beaten by a cheaper one is never picked; then the highest FLOPs (latency), then
        the higher top1, then the earlier entry. Without held-out accuracies: the highest FLOPs (latency).

        A budget below the smallest entry raises ValueError, or with `strict=False` gives the smallest entry.
        """
        index, entry, _ = self.choose(budget, strict, latency_ms=latency_ms)
        return index, entry

    def choose(self, budget: Optional[FlopsLike] = None, strict: bool = True, *,
               latency_ms: Union[None, float, str] = None) -> BudgetChoice:
        """`select`, also telling whether the budget was below every entry; the budget is parsed once, here."""
        if (budget is None) == (latency_ms is None):
            raise ValueError('give exactly one budget: flops (MACs, or a string like "300M") or latency_ms '
                             '(milliseconds on the device the table\'s latencies were predicted for)')
        if not self.entries:
            raise RuntimeError('this model has no budget table: load trained weights that carry one '
                               '(pretrained=True or a checkpoint saved by timm_pss), or build one with '
                               'timm_pss.fill_budget_table(model, subnets, loader)')
        if latency_ms is None:
            limit, what = parse_flops(budget), 'budget {} FLOPs'
            unit, exact = format_flops, (lambda v: f'{format_flops(v)} ({int(v)} MACs)')
            values = [float(e.flops) for e in self.entries]
        else:
            limit, what = parse_latency(latency_ms), 'latency budget {}'
            unit = exact = (lambda v: f'{v:.4g} ms')
            values = [e.metrics.get(LATENCY_METRIC) for e in self.entries]
            if any(v is None for v in values):
                raise ValueError(f'this budget table records no predicted latency for entries '
                                 f'{_listed([i for i, v in enumerate(values) if v is None])}: record it with '
                                 f'timm_pss.latency.record_latency(model, table) for a LatencyTable of your device')
        fitting = [i for i, v in enumerate(values) if v <= limit]
        if not fitting:
            smallest = min(range(len(values)), key=lambda i: (values[i], i))
            if strict:
                raise ValueError(f'{what.format(unit(limit))} is below the smallest budget-table entry, '
                                 f'{exact(values[smallest])}; pass a budget of at least that, or strict=False to get '
                                 f'the smallest entry')
            return BudgetChoice(smallest, self.entries[smallest], True)
        best = max(fitting, key=lambda i: (self.entries[i].metrics.get(SELECTION_METRIC, -math.inf), values[i],
                                           self.entries[i].metrics.get('top1', -math.inf), -i))
        return BudgetChoice(best, self.entries[best], False)

    def serving_budgets(self) -> List[Optional[str]]:
        """Per entry, a budget string for which `set_budget` serves exactly that entry (its MMACs rounded up, or
        its exact MACs where rounding up would reach a better entry), or None for an entry that no budget serves
        (a cheaper entry scores at least as well on held-out data)."""
        labels: List[Optional[str]] = []
        for i, e in enumerate(self.entries):
            if self.choose(e.flops).index != i:
                labels.append(None)
                continue
            label = budget_label(e.flops)
            labels.append(label if self.choose(label).index == i else str(e.flops))
        return labels

    def to_json(self) -> str:
        doc = {'format': TABLE_FORMAT, 'group_names': list(self.group_names),
               'entries': [e.to_dict() for e in self.entries]}
        if self.info:
            doc['info'] = dict(self.info)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = 'budget table') -> 'BudgetTable':
        """Parse and check a table; every problem is a ValueError naming `where` and what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError(f'{where}: not valid JSON ({e})') from None
        except RecursionError:
            raise ValueError(f'{where}: JSON nested too deeply (a budget table is an object of entry lists, '
                             f'a few levels deep)') from None
        if not isinstance(doc, dict) or doc.get('format') != TABLE_FORMAT:
            raise ValueError(f'{where}: expected a JSON object with "format": "{TABLE_FORMAT}"')
        names, raw = doc.get('group_names'), doc.get('entries')
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(raw, list):
            raise ValueError(f'{where}: "group_names" must be a list of strings and "entries" a list')
        entries = []
        for i, e in enumerate(raw):
            try:
                metrics = e.get('metrics', {})
                if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in metrics.values()):
                    raise ValueError('metrics must map names to numbers (true / false are not numbers)')
                flops = e['flops']
                if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not 0 <= flops < 2 ** 63:
                    raise ValueError(f'"flops" must be a finite number of MACs in [0, 2**63), got {describe_value(flops)}')
                entry = BudgetEntry(int(flops), Subnet.from_dict(e['subnet']),
                                    {str(k): float(v) for k, v in metrics.items()})
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
                raise ValueError(f'{where}: entry {i} is malformed ({err})') from None
            entries.append(entry)
        info = doc.get('info', {})
        if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
            raise ValueError(f'{where}: "info" must map names to strings')
        return cls(names, entries, info)

    def conform(self, space: SearchSpace, where: str = 'budget table') -> 'BudgetTable':
        """This table for a model of `space`: same groups and subnets required (else ValueError), FLOPs recounted.

        FLOPs depend on the head (e.g. `num_classes`), so a table loaded into a model with another head gets that
        model's counts; the recorded metrics stay as measured.
        """
        if self.group_names != tuple(space.group_names):
            raise ValueError(f'{where}: made for channel groups {list(self.group_names)}, this model has '
                             f'{list(space.group_names)}')
        entries = []
        for i, e in enumerate(self.entries):
            try:
                space.validate(e.subnet)
            except ValueError as err:
                raise ValueError(f'{where}: entry {i} is not in this model\'s space: {err}') from None
            entries.append(BudgetEntry(space.flops(e.subnet), e.subnet, e.metrics))
        return BudgetTable(self.group_names, entries, self.info)

    def __str__(self) -> str:
        metric_names = sorted({k for e in self.entries for k in e.metrics})
        head = ['#', 'FLOPs', 'res'] + metric_names + ['widths']
        rows = [[str(i), format_flops(e.flops), str(e.subnet.resolution)]
                + [f'{e.metrics[m]:#.4g}' if m in e.metrics else '-' for m in metric_names]
                + [' '.join(str(w) for w in e.subnet.widths)] for i, e in enumerate(self.entries)]
        if not rows:
            return 'BudgetTable (empty)'
        sizes = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
        lines = ['  '.join(v.rjust(s) if c < len(head) - 1 else v for c, (v, s) in enumerate(zip(r, sizes)))
                 for r in [head] + rows]
        return '\n'.join([f'BudgetTable ({len(rows)} entries)'] + lines)

    def __repr__(self) -> str:
        return f'BudgetTable({len(self)} entries, groups={len(self.group_names)})'
