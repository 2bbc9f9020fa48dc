"""The data step: turn the jokes CSV (columns `ID,Joke`, CSV quoting) into
`data.txt`, one joke per line, for finetune.py.

Whitespace inside a joke, line breaks included, collapses to single spaces so
that every line of the output is exactly one joke; empty jokes are left out.

    python prepare_data.py --csv_file=onelinefun.csv --output_file=data.txt
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv_file", default="onelinefun.csv", help="default: onelinefun.csv")
    parser.add_argument("--output_file", default="data.txt", help="default: data.txt")
    args = parser.parse_args()

    try:
        with open(args.csv_file, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if "Joke" not in (reader.fieldnames or []):
                raise SystemExit(f"prepare_data.py: {args.csv_file} has no Joke column "
                                 f"(columns: {', '.join(reader.fieldnames or [])})")
            jokes = [" ".join(row["Joke"].split()) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        print(f"prepare_data.py: cannot read {args.csv_file}: {error}", file=sys.stderr)
        raise SystemExit(1)

    jokes = [joke for joke in jokes if joke]
    Path(args.output_file).write_text("".join(f"{joke}\n" for joke in jokes), encoding="utf-8")
    print(f"wrote {len(jokes)} jokes to {args.output_file}")


if __name__ == "__main__":
    main()
