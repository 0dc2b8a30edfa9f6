#!/usr/bin/env bash
# Job status for Snakemake's cluster-generic executor: prints running, success or failed
# for the Slurm job id given. squeue knows queued and running jobs; scontrol keeps finished
# ones for MinJobAge seconds (300 by default); sacct knows them where accounting is on.
jobid="$1"
state=$(squeue -h -j "$jobid" -o %T 2>/dev/null | head -n 1)
if [ -z "$state" ]; then
  state=$(scontrol show job "$jobid" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1)
fi
if [ -z "$state" ] && command -v sacct >/dev/null 2>&1; then
  state=$(sacct -n -X -P -j "$jobid" -o State 2>/dev/null | head -n 1 | cut -d ' ' -f 1)
fi
case "$state" in
  COMPLETED) echo success ;;
  # unknown (a controller that did not answer this time) counts as still running
  ""|PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|RESIZING|SIGNALING|STAGE_OUT|STOPPED) echo running ;;
  *) echo failed ;;
esac
