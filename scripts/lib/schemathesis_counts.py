"""Prints what one schemathesis run did, from its NDJSON report: test cases by phase and mode,
responses by status class, and for every check how many test cases it ran on, passed and failed.

usage: python3 schemathesis_counts.py RUN_NAME REPORT.ndjson

Exits 1 if any check failed or any response was a 5xx, so that a caller can rely on the counts
as well as on schemathesis' exit status.
"""

import collections
import json
import sys


def main() -> int:
    name, path = sys.argv[1], sys.argv[2]
    phases = collections.Counter()
    modes = collections.Counter()
    statuses = collections.Counter()
    checked = collections.Counter()
    failed = collections.Counter()
    links = collections.Counter()
    with open(path, encoding="utf-8") as report:
        for line in report:
            event = json.loads(line)
            kind, body = next(iter(event.items()))
            if kind != "ScenarioFinished":
                continue
            recorder = body.get("recorder") or {}
            for case_id, case in (recorder.get("cases") or {}).items():
                phases[body.get("phase")] += 1
                meta = case.get("value", {}).get("meta") or {}
                modes[(meta.get("generation") or {}).get("mode", "?")] += 1
                transition = case.get("transition")
                if transition:
                    links[transition.get("id")] += 1
            for interaction in (recorder.get("interactions") or {}).values():
                response = interaction.get("response")
                if response:
                    statuses[f"{response['status_code'] // 100}xx"] += 1
            for results in (recorder.get("checks") or {}).values():
                for result in results:
                    checked[result["name"]] += 1
                    if result["status"] == "failure":
                        failed[result["name"]] += 1
    cases = sum(phases.values())
    print(
        f"check-openapi: {name}: {cases} test cases generated "
        f"({', '.join(f'{p} {n}' for p, n in sorted(phases.items()))}; "
        f"{', '.join(f'{m} {n}' for m, n in sorted(modes.items()))}), "
        f"{len(links)} links followed {sum(links.values())} times; "
        f"responses {', '.join(f'{s} {n}' for s, n in sorted(statuses.items()))}"
    )
    print(f"check-openapi: {name}: {'check':<30} {'checked':>8} {'passed':>8} {'failed':>8}")
    for check in sorted(checked):
        total, bad = checked[check], failed[check]
        print(f"check-openapi: {name}: {check:<30} {total:>8} {total - bad:>8} {bad:>8}")
    return 1 if failed or statuses["5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
