"""Publish a trained supernet to the Hugging Face Hub.

    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME               # write and upload
    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME --dry-run DIR # write the folder only
    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME --create-pr   # upload as a pull request

--dry-run writes into a new or empty folder (--force: one holding other files), never into a training run folder.

The folder is timm's Hub layout (config.json, model.safetensors with the budget table) plus README.md (the model
card from MODEL_CARD.md, filled with the run's measurements), accuracy_vs_flops.png, results.csv/json and
training_args.yaml. A README.md already in the repository (or the --dry-run folder) is a hand-edited card and is
kept unless --overwrite-readme. Log in with `hf auth login` or set HF_TOKEN; no token is read, printed or stored here.
"""
import argparse
import logging
import sys

from .hub import publish


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pss.publish', description=__doc__.split('\n', 1)[0])
    parser.add_argument('source', help='a finished train_pss.py run folder (or a file inside one)')
    parser.add_argument('--repo-id', required=True, help='the Hub repository, ORG/NAME')
    parser.add_argument('--dry-run', metavar='DIR', default=None,
                        help='write the Hub folder to DIR (new or empty), upload nothing')
    parser.add_argument('--force', action='store_true',
                        help='let --dry-run replace the Hub files in a folder that holds other files (never a run)')
    parser.add_argument('--private', action='store_true', help='create the repository as private')
    parser.add_argument('--commit-message', default='Add timm_pss supernet')
    parser.add_argument('--revision', default=None, metavar='BRANCH',
                        help='upload to this branch of the repository instead of main (as timm push_to_hf_hub)')
    parser.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    parser.add_argument('--overwrite-readme', action='store_true',
                        help='replace a README.md already in the repository or folder with the generated card')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        where = publish(args.source, args.repo_id, dry_run=args.dry_run, private=args.private,
                        commit_message=args.commit_message, force=args.force, revision=args.revision,
                        create_pr=args.create_pr, overwrite_readme=args.overwrite_readme)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f'error: {e}\n')
    except OSError as e:
        parser.exit(1, f'error: {e}\n')
    print(f'{"wrote" if args.dry_run else "published"} {where}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
