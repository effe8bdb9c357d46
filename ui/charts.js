// The two charts, drawn as SVG by this small module (no library).
// Each mark carries its numbers in data-* attributes, so a test (or a
// curious analyst with the inspector) can read what is drawn.

import { count, t } from './i18n.js';

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round upper bound for an axis: 1, 2 or 5 times a power of ten. */
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/**
 * Round ticks from at or below `lo` to at or above `hi`: about five steps of
 * 1, 2 or 5 times a power of ten.
 */
function niceTicks(lo, hi) {
  const step = niceMax((hi - lo) / 5 || 1);
  const from = Math.floor(lo / step) * step;
  const to = Math.max(Math.ceil(hi / step) * step, from + step);
  const ticks = [];
  for (let i = 0; from + i * step <= to + step / 2; i += 1) ticks.push(Number((from + i * step).toFixed(6)));
  return ticks;
}

/**
 * Presents per month: one bar per month with the month's total. `months`
 * is the API's answer ({"1": [{citizen_id, presents}], …}); `nameOf(id)`
 * names a citizen; `onFocus(label, top)` gets the bar in focus (its month's
 * total as text, and the citizens who buy most: {citizen_id, presents});
 * `onPick(month)` a bar clicked, or Enter on it.
 */
export function drawBirthdays(container, months, { locale, nameOf, onFocus, onPick }) {
  const numbers = new Intl.NumberFormat(locale);
  const monthName = new Intl.DateTimeFormat(locale, { month: 'short', timeZone: 'UTC' });
  const longMonth = new Intl.DateTimeFormat(locale, { month: 'long', timeZone: 'UTC' });
  const totals = [];
  for (let m = 1; m <= 12; m += 1) {
    const entries = months[String(m)] ?? [];
    totals.push({
      month: m,
      total: entries.reduce((sum, e) => sum + e.presents, 0),
      top: [...entries].sort((a, b) => b.presents - a.presents || a.citizen_id - b.citizen_id).slice(0, 5),
    });
  }
  // Drawn at the container's own width, so text keeps its size, and as tall
  // as the room its card leaves it (beside a taller card of towns), 260–480 px.
  container.replaceChildren();
  const width = Math.max(300, container.clientWidth || 640);
  const height = Math.round(Math.min(480, Math.max(260, container.clientHeight)));
  const left = 44;
  const band = (width - left - 8) / 12;
  // Month names wider than their bar (a phone, in Russian: "февр.", "нояб.")
  // take two rows, every other month on the lower one.
  const longest = Math.max(...totals.map(({ month }) => monthName.format(new Date(Date.UTC(2000, month - 1, 1))).length));
  const rows = longest * 6.8 > band - 2 ? 2 : 1;
  const bottom = rows === 2 ? 40 : 28;
  const top = 30;
  const max = niceMax(Math.max(...totals.map((m) => m.total)));
  const scale = (v) => (height - bottom - top) * (v / max);
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'group',
    'aria-label': t('Presents per month'),
  });
  for (const tick of [0, 0.5, 1]) {
    const y = height - bottom - scale(max * tick);
    svg.append(el('line', { x1: left, x2: width - 8, y1: y, y2: y, class: 'gridline' }));
    svg.append(el('text', { x: left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' }, numbers.format(max * tick)));
  }
  svg.append(el('text', { x: 4, y: 12, class: 'axis-title' }, t('Presents')));
  for (const { month, total, top: best } of totals) {
    const date = new Date(Date.UTC(2000, month - 1, 1));
    const x = left + (month - 1) * band + band * 0.15;
    const h = scale(total);
    const who = best.map((e) => `${nameOf(e.citizen_id)} (${e.citizen_id}): ${numbers.format(e.presents)}`);
    const label = t('{month}: {presents}', { month: longMonth.format(date), presents: count('presents', total) });
    const detail = who.length ? t('{label}. Buying most: {who}', { label, who: who.join('; ') }) : `${label}.`;
    const bar = el('g', {
      class: 'bar', tabindex: 0, role: 'img', 'aria-label': detail,
      'data-month': month, 'data-total': total,
    });
    bar.append(el('title', {}, detail));
    bar.append(el('rect', { x, y: height - bottom - h, width: band * 0.7, height: Math.max(h, 0), rx: 2 }));
    bar.append(el('text', { x: x + band * 0.35, y: height - bottom - h - 4, class: 'value', 'text-anchor': 'middle' }, numbers.format(total)));
    const labelY = rows === 2 && month % 2 === 0 ? height - 6 : height - bottom + 16;
    bar.append(el('text', { x: x + band * 0.35, y: labelY, class: 'axis', 'text-anchor': 'middle' }, monthName.format(date)));
    const show = () => onFocus(label, best);
    bar.addEventListener('mouseenter', show);
    bar.addEventListener('focus', show);
    bar.addEventListener('click', () => onPick(month));
    bar.addEventListener('keydown', (event) => { if (event.key === 'Enter') onPick(month); });
    svg.append(bar);
  }
  container.replaceChildren(svg);
}

/**
 * Age percentiles per town: one row per town with p50, p75 and p99 marked
 * on one age axis. `towns` is the API's answer, `sort` one of p50, p99,
 * town; `filter` a case-insensitive part of a town's name.
 */
export function drawPercentiles(container, towns, { locale, sort, filter }) {
  const numbers = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  const collator = new Intl.Collator(locale);
  const wanted = filter.trim().toLocaleLowerCase(locale);
  const rows = towns.filter((town) => !wanted || town.town.toLocaleLowerCase(locale).includes(wanted));
  if (sort === 'town') rows.sort((a, b) => collator.compare(a.town, b.town));
  else rows.sort((a, b) => b[sort] - a[sort] || collator.compare(a.town, b.town));
  if (rows.length === 0) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = towns.length ? t('No town matches.') : t('No citizens.');
    container.replaceChildren(p);
    return;
  }
  const width = Math.max(300, container.clientWidth || 640);
  const row = 24;
  const labelWidth = Math.min(170, width * 0.36);
  const right = 16;
  const top = 26;
  const height = top + rows.length * row + 8;
  // The axis spans the ages there are (every town's, so a filter keeps the
  // scale), not 0–100: medians of 48 and 53 stay apart.
  const ticks = niceTicks(Math.min(...towns.map((town) => town.p50)), Math.max(...towns.map((town) => town.p99)));
  const [from, to] = [ticks[0], ticks[ticks.length - 1]];
  const x = (age) => labelWidth + (width - labelWidth - right) * ((age - from) / (to - from));
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'group',
    'aria-label': t('Age percentiles per town, on an axis from {from} to {to} years', { from: numbers.format(from), to: numbers.format(to) }),
    'data-axis-from': from, 'data-axis-to': to,
  });
  for (const age of ticks) {
    svg.append(el('line', { x1: x(age), x2: x(age), y1: top - 6, y2: height - 4, class: 'gridline' }));
    svg.append(el('text', { x: x(age), y: 14, class: 'axis', 'text-anchor': 'middle' }, numbers.format(age)));
  }
  svg.append(el('text', { x: labelWidth - 14, y: 14, class: 'axis-title', 'text-anchor': 'end' }, t('Age, years')));
  rows.forEach((town, i) => {
    const y = top + i * row + row / 2;
    const label = t('{town}: p50 {p50}, p75 {p75}, p99 {p99} years', {
      town: town.town, p50: numbers.format(town.p50), p75: numbers.format(town.p75), p99: numbers.format(town.p99),
    });
    const g = el('g', {
      class: 'town', tabindex: 0, role: 'img', 'aria-label': label,
      'data-town': town.town, 'data-p50': town.p50, 'data-p75': town.p75, 'data-p99': town.p99,
    });
    g.append(el('title', {}, label));
    g.append(el('text', { x: labelWidth - 8, y: y + 4, class: 'label', 'text-anchor': 'end' }, town.town));
    g.append(el('line', { x1: x(town.p50), x2: x(town.p99), y1: y, y2: y, class: 'span' }));
    // Largest first, so marks that coincide (p50 = p75 = p99 in a small
    // town) nest, each still showing: a diamond, a square in it, a dot in that.
    g.append(el('path', { d: `M ${x(town.p99)} ${y - 7} l 7 7 l -7 7 l -7 -7 z`, class: 'p99' }));
    g.append(el('rect', { x: x(town.p75) - 4, y: y - 4, width: 8, height: 8, class: 'p75' }));
    g.append(el('circle', { cx: x(town.p50), cy: y, r: 2.5, class: 'p50' }));
    svg.append(g);
  });
  container.replaceChildren(svg);
  // A name wider than its column is cut at the end, as drawn in this font
  // (a character count cuts wide letters at the start instead).
  const room = labelWidth - 12;
  for (const label of svg.querySelectorAll('text.label')) {
    const name = label.textContent;
    let length = label.getComputedTextLength();
    let keep = name.length;
    while (length > room && keep > 1) {
      keep = Math.min(keep - 1, Math.floor((keep * room) / length));
      label.textContent = `${name.slice(0, keep)}…`;
      length = label.getComputedTextLength();
    }
  }
}
