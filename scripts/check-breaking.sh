#!/usr/bin/env bash
# Checks each recent commit that changed proto/ against its parent with `buf breaking` (FILE rules),
# so a change that would break generated clients cannot land unnoticed. A commit whose message
# contains "BREAKING CHANGE" (conventional commits) is an explicit, reviewable exemption.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
checked=0
for commit in $(git rev-list -n 30 HEAD -- proto); do
  parent=$(git rev-parse -q --verify "$commit^" 2>/dev/null) || continue
  git cat-file -e "$parent:proto" 2>/dev/null || continue
  if git log -1 --format=%B "$commit" | grep -q "BREAKING CHANGE"; then
    echo "breaking: ${commit:0:8} is marked BREAKING CHANGE, not checked"
    continue
  fi
  npx --no-install buf breaking ".git#ref=$commit,subdir=proto" --against ".git#ref=$parent,subdir=proto" --error-format text
  checked=$((checked + 1))
done
if ! git diff --quiet HEAD -- proto 2>/dev/null && git cat-file -e HEAD:proto 2>/dev/null; then
  npx --no-install buf breaking proto --against ".git#ref=HEAD,subdir=proto"
  checked=$((checked + 1))
fi
echo "breaking: $checked contract change(s) checked against their parents"
