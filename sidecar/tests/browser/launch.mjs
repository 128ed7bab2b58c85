// Debian's Chromium, launched alike by every script. With HANDOVER_NETLOG_DIR set, each browser
// writes its net log there: every request, connect and network change it saw (an
// ERR_NETWORK_CHANGED is explained by the NETWORK_IP_ADDRESSES_CHANGED before it).
import { basename } from 'node:path';
import { chromium } from 'playwright-core';

export function launchChromium() {
  const dir = process.env.HANDOVER_NETLOG_DIR;
  const netLog = dir
    ? [`--log-net-log=${dir}/${basename(process.argv[1])}-${process.pid}.json`, '--net-log-capture-mode=Everything']
    : [];
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', ...netLog] });
}
