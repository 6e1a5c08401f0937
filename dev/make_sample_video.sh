#!/usr/bin/env bash
# Makes connectors/simulator/media/sample.mp4, the video every completed simulator job serves:
# 2 s of ffmpeg's own test pattern (no outside footage), 320x180 at 12 fps, H.264 baseline in an
# MP4 with the index at the front (faststart) so a browser starts playing before the last byte.
# Run once by hand when the clip should change (needs Debian's ffmpeg); the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ffmpeg >/dev/null || { echo "needs ffmpeg (apt-get install ffmpeg)" >&2; exit 1; }
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=320x180:rate=12:duration=2" \
  -c:v libx264 -profile:v baseline -level 3.0 -pix_fmt yuv420p -crf 32 -preset veryslow \
  -movflags +faststart -an -map_metadata -1 -fflags +bitexact -flags:v +bitexact \
  connectors/simulator/media/sample.mp4
ls -l connectors/simulator/media/sample.mp4
