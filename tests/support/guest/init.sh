#!/bin/sh
# PID 1 of the dwcp test guest (busybox sh, from an initramfs built by tests/support/guest_image.ts).
#
# Kernel command line parameters:
#   dwcp.mem_mib=N     MiB of real data the workload holds in guest memory (default 64)
#   dwcp.dirty_mibps=R MiB per second re-written across that memory (default 0: none)
#   dwcp.hb_ms=M       heartbeat period in milliseconds (default 20)
#   dwcp.rewrite_mib=W one process rewrites W MiB of its own memory from /dev/urandom, over and over, with
#                      no context switch between most of its stores (default 0: none)
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
REWRITE=0
read -r CMDLINE </proc/cmdline
for w in $CMDLINE; do
  case "$w" in
  dwcp.mem_mib=*) MEM=${w#*=} ;;
  dwcp.dirty_mibps=*) DIRTY=${w#*=} ;;
  dwcp.hb_ms=*) HB=${w#*=} ;;
  dwcp.rewrite_mib=*) REWRITE=${w#*=} ;;
  esac
done
case "$MEM" in '' | *[!0-9]*) MEM=64 ;; esac
case "$DIRTY" in '' | *[!0-9]*) DIRTY=0 ;; esac
case "$HB" in '' | *[!0-9]* | 0) HB=20 ;; esac
case "$REWRITE" in '' | *[!0-9]*) REWRITE=0 ;; esac
[ "$MEM" -lt 1 ] && MEM=1

read -r BOOT </proc/sys/kernel/random/boot_id

err() { echo "dwcp-guest error: $*"; }

# --- the held memory ------------------------------------------------------------------------------
# /hold is a tmpfs, so its files live in guest RAM. Each 1 MiB chunk mixes fresh random bytes (1/8),
# kernel symbol text (1/2) and a slice of the busybox binary: real, non-zero data that compresses
# somewhat.
mount -t tmpfs -o size=$((MEM + 8))m,mode=0700 tmpfs /hold || err "cannot mount tmpfs /hold"

# 1 MiB of text (256 blocks of 4 KiB) and a 2 MiB pool the dirtier copies from. Copies use dd and
# cat: busybox's head and wc go byte by byte, which is slow under TCG.
{
  cat /proc/kallsyms
  yes "dwcp-guest filler text $BOOT"
} | dd of=/tmp/text bs=4096 count=256 iflag=fullblock 2>/dev/null
{
  cat /tmp/text
  dd if=/bin/busybox bs=4096 count=192 2>/dev/null
  dd if=/dev/urandom bs=262144 count=1 2>/dev/null
} >/tmp/pool

# Each chunk starts with a random prefix whose length differs for every chunk (1..4095 bytes past
# 124 KiB, distinct for 4095 chunks), so the text and busybox slices after it sit at a different
# offset within their 4 KiB pages in every chunk: no held page is a copy of another (up to 4095 MiB).
BBBLOCKS=$(($(stat -c %s /bin/busybox) / 4096))
i=0
while [ "$i" -lt "$MEM" ]; do
  p=$(((i * 2053) % 4095 + 1))
  {
    dd if=/dev/urandom bs=$((126976 + p)) count=1 2>/dev/null
    dd if=/tmp/text bs=4096 skip=$(((i * 7) % 128)) count=128 2>/dev/null
    dd if=/bin/busybox bs=$((397312 - p)) skip=$((((i * 13) % (BBBLOCKS - 98)) * 4096)) count=1 \
      iflag=skip_bytes 2>/dev/null
  } >/hold/chunk.$i || break
  i=$((i + 1))
done
# Whole MiB chunks actually held (a full tmpfs leaves a short last chunk).
filled=$(ls -l /hold | grep -c ' 1048576 ')
if [ "$filled" -lt "$MEM" ]; then
  err "filled only $filled of $MEM MiB"
fi

echo "dwcp-guest ready boot=$BOOT mem_mib=$filled"

# --- the dirtier -----------------------------------------------------------------------------------
# Rewrites DIRTY MiB/s spread over the held chunks, walking through them 4 KiB block by block, with
# data copied from a rotating offset in /tmp/pool so the new contents differ from the old. It paces
# itself on /proc/uptime: whenever it owes 100 ms worth of writes it writes them, else it naps.

# Guest uptime in centiseconds, in $CS (no subshell).
uptime_cs() {
  read -r up _ </proc/uptime
  f=${up#*.}
  CS=$((${up%.*} * 100 + ${f#0}))
}

dirtier() {
  per_sec=$((DIRTY * 256))
  # Blocks per dd: 100 ms worth, at most one chunk (each dd is a fork, which is dear under TCG).
  batch=$((per_sec / 10))
  [ "$batch" -gt 256 ] && batch=256
  [ "$batch" -lt 1 ] && batch=1
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
    if [ "$owed" -lt "$batch" ]; then
      usleep 20000
      continue
    fi
    owed=$batch
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

# --- the rewriter ----------------------------------------------------------------------------------
# One long-lived dd reading the random device into a W MiB buffer: the kernel stores into the same pages
# of one address space again and again, so under TCG they go through TLB entries that stay valid between
# context switches (what QEMU 7.2 lost track of while migrating: src/vm/qemu_args.ts).
if [ "$REWRITE" -gt 0 ]; then
  dd if=/dev/urandom of=/dev/null bs=${REWRITE}M count=1000000000 2>/dev/null &
fi

# --- the heartbeat ---------------------------------------------------------------------------------
hb=0
while :; do
  hb=$((hb + 1))
  read -r up _ </proc/uptime
  echo "hb $BOOT $hb $up"
  usleep $((HB * 1000)) || sleep 1
done
