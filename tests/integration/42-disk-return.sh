#!/usr/bin/env bash
# 40-disk-migration.sh where the destination holds an older copy of the
# disk with 10% of the blocks changed since: about 10% crosses.
DISK_RETURN=1 exec bash "$(dirname "$0")/40-disk-migration.sh"
