#!/bin/sh
# PID 1 of the dwcp test guest (busybox sh, from an initramfs built by tests/support/guest_image.ts).
#
# Kernel command line parameters:
#   dwcp.mem_mib=N     MiB of real data the workload holds in guest memory (default 64)
#   dwcp.dirty_mibps=R MiB per second re-written across that memory (default 0: none)
#   dwcp.hb_ms=M       heartbeat period in milliseconds (default 20)
#
# Console protocol (on /dev/ttyS0):
#   dwcp-guest ready boot=<boot_id> mem_mib=N    once the memory is filled
#   hb <boot_id> <counter> <uptime_seconds>       every M ms, counter strictly increasing from 1
#   dwcp-guest error: <text>                      when something went wrong (the heartbeat goes on)
#
# PID 1 must never exit (the kernel panics), so nothing here uses `set -e` and the script ends in an
# endless loop.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
# A serial hangup must not stop the heartbeat or the dirtier.
trap '' HUP INT TERM

mkdir -p /proc /sys /dev /tmp /hold
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
[ -c /dev/ttyS0 ] && exec </dev/null >/dev/ttyS0 2>&1

MEM=64
DIRTY=0
HB=20
read -r CMDLINE </proc/cmdline
for w in $CMDLINE; do
  case "$w" in
  dwcp.mem_mib=*) MEM=${w#*=} ;;
  dwcp.dirty_mibps=*) DIRTY=${w#*=} ;;
  dwcp.hb_ms=*) HB=${w#*=} ;;
  esac
done
case "$MEM" in '' | *[!0-9]*) MEM=64 ;; esac
case "$DIRTY" in '' | *[!0-9]*) DIRTY=0 ;; esac
case "$HB" in '' | *[!0-9]* | 0) HB=20 ;; esac
[ "$MEM" -lt 1 ] && MEM=1

read -r BOOT </proc/sys/kernel/random/boot_id

err() { echo "dwcp-guest error: $*"; }

# --- the held memory ------------------------------------------------------------------------------
# /hold is a tmpfs, so its files live in guest RAM. Each 1 MiB chunk mixes kernel symbol text, slices
# of the busybox binary and fresh random bytes: real, non-zero data that compresses somewhat.
mount -t tmpfs -o size=$((MEM + 8))m,mode=0700 tmpfs /hold || err "cannot mount tmpfs /hold"

# 1 MiB of text (256 blocks of 4 KiB) and a 2 MiB pool the dirtier copies from.
{
  head -c 1048576 /proc/kallsyms
  yes "dwcp-guest filler text $BOOT" | head -c 1048576
} | head -c 1048576 >/tmp/text
{
  cat /tmp/text
  head -c 786432 /bin/busybox
  head -c 262144 /dev/urandom
} >/tmp/pool

BBBLOCKS=$(($(wc -c </bin/busybox) / 4096))
filled=0
i=0
while [ "$i" -lt "$MEM" ]; do
  {
    dd if=/tmp/text bs=4096 skip=$(((i * 7) % 128)) count=128 2>/dev/null
    dd if=/bin/busybox bs=4096 skip=$(((i * 13) % (BBBLOCKS - 96))) count=96 2>/dev/null
    head -c 131072 /dev/urandom
  } >/hold/chunk.$i
  [ "$(wc -c </hold/chunk.$i)" -eq 1048576 ] || break
  i=$((i + 1))
  filled=$i
done
if [ "$filled" -lt "$MEM" ]; then
  err "filled only $filled of $MEM MiB"
fi

echo "dwcp-guest ready boot=$BOOT mem_mib=$filled"

# --- the dirtier -----------------------------------------------------------------------------------
# Rewrites DIRTY MiB/s spread over the held chunks, walking through them 4 KiB block by block, with
# data copied from a rotating offset in /tmp/pool so the new contents differ from the old. It paces
# itself on /proc/uptime: it writes what it owes, then naps.

# Guest uptime in centiseconds, in $CS (no subshell).
uptime_cs() {
  read -r up _ </proc/uptime
  f=${up#*.}
  CS=$((${up%.*} * 100 + ${f#0}))
}

dirtier() {
  per_sec=$((DIRTY * 256))
  total=$((filled * 256))
  pos=0
  src=0
  written=0
  uptime_cs
  start=$CS
  while :; do
    uptime_cs
    owed=$(((CS - start) * per_sec / 100 - written))
    if [ "$owed" -gt "$per_sec" ]; then
      # More than a second behind: give up on the backlog rather than burst.
      written=$((written + owed - per_sec))
      owed=$per_sec
    fi
    if [ "$owed" -le 0 ]; then
      usleep 20000
      continue
    fi
    [ "$owed" -gt 256 ] && owed=256
    blk=$((pos % 256))
    [ "$owed" -gt $((256 - blk)) ] && owed=$((256 - blk))
    dd if=/tmp/pool of=/hold/chunk.$((pos / 256)) bs=4096 skip=$src seek=$blk count=$owed \
      conv=notrunc 2>/dev/null
    written=$((written + owed))
    pos=$(((pos + owed) % total))
    src=$(((src + owed + 17) % 256))
  done
}

if [ "$DIRTY" -gt 0 ] && [ "$filled" -gt 0 ]; then
  dirtier &
fi

# --- the heartbeat ---------------------------------------------------------------------------------
hb=0
while :; do
  hb=$((hb + 1))
  read -r up _ </proc/uptime
  echo "hb $BOOT $hb $up"
  usleep $((HB * 1000)) || sleep 1
done
