#!/usr/bin/env bash
# 40-disk-migration.sh with qcow2 images on both sides.
DISK_FORMAT=qcow2 exec bash "$(dirname "$0")/40-disk-migration.sh"
