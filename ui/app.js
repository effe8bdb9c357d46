// The analysts' page: the public API of this service, in a browser.
// Plain ES module, no build step; served from the binary at /ui/app.js.

import { drawBirthdays, drawPercentiles } from './charts.js';
import { choose, count, language, locale, t, translatePage } from './i18n.js';

translatePage();
document.getElementById('language').value = language;
document.getElementById('language').addEventListener('change', (event) => {
  choose(event.target.value);
  // Every string is drawn again in the new language; the address keeps the view.
  location.reload();
});
const numbers = new Intl.NumberFormat(locale);
const when = new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short' });
const PAGE = 50;
// Imports of up to this many citizens are loaded whole (sort, filter, links and
// the table's CSV in the page); bigger ones are read from the service a page at a time.
const WHOLE = 50_000;
const $ = (id) => document.getElementById(id);

// ---- the API ---------------------------------------------------------------

let token = sessionStorage.getItem('gifts-token') || '';

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.error = body?.error || null;
  }
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** `data` of the API's answer; the whole answer (`data` and its siblings) when `whole`. */
async function api(method, path, body, whole = false) {
  const response = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) askForToken();
    throw new ApiError(response.status, parsed);
  }
  return whole ? parsed : parsed?.data;
}

function askForToken() {
  $('token-form').hidden = false;
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('gifts-token', token);
  $('token').value = '';
  route();
});

function say(text) {
  $('status').textContent = text;
}

/** The service's message without the "field (citizen N): " it starts with, shown apart. */
function reason({ field, citizen_id: citizen, message }) {
  for (const prefix of [`${field} (citizen ${citizen}): `, `${field}: `]) {
    if (field && message.startsWith(prefix)) return message.slice(prefix.length);
  }
  return message;
}

/** One line for a refused request: the citizen and the field it names, then why. */
function describe(error) {
  if (error instanceof ApiError && error.status === 401) return t('This service asks for an access token: enter it above.');
  if (error instanceof ApiError && error.status === 403) return t('This token may not do that: ask for one with more rights.');
  if (!(error instanceof ApiError) || !error.error) return error.message;
  const { field, citizen_id: citizen } = error.error;
  const where = [citizen != null ? t('citizen {id}', { id: citizen }) : null, field || null].filter(Boolean);
  return (where.length ? `${where.join(', ')}: ` : '') + reason(error.error);
}

// ---- the imports -----------------------------------------------------------

let cursor = null;

function importRow(info) {
  const tr = document.createElement('tr');
  tr.dataset.importId = info.import_id;
  const link = document.createElement('a');
  link.href = `#/imports/${info.import_id}`;
  link.textContent = t('Import {id}', { id: info.import_id });
  const first = document.createDocumentFragment();
  first.append(link);
  if (info.name) {
    const name = document.createElement('span');
    name.className = 'import-name';
    name.textContent = info.name;
    first.append(name);
  }
  const cells = [
    first,
    numbers.format(info.citizens),
    when.format(new Date(info.created_at)),
    numbers.format(info.version),
  ];
  cells.forEach((content, i) => {
    const td = document.createElement('td');
    if (i === 1 || i === 3) td.className = 'num';
    td.append(content);
    tr.append(td);
  });
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'danger small';
  remove.textContent = t('Delete…');
  remove.setAttribute('aria-label', t('Delete import {id}', { id: info.import_id }));
  remove.addEventListener('click', () => deleteImport(info.import_id, info.citizens));
  const td = document.createElement('td');
  td.append(remove);
  tr.append(td);
  return tr;
}

async function loadImports(more = false) {
  const query = more && cursor ? `?limit=50&cursor=${encodeURIComponent(cursor)}` : '?limit=50';
  const page = await api('GET', `/imports${query}`);
  const body = $('imports').tBodies[0];
  if (!more) body.replaceChildren();
  for (const info of page.imports) body.append(importRow(info));
  cursor = page.next_cursor;
  $('imports-more').hidden = !cursor;
  $('imports-empty').hidden = body.rows.length > 0;
}

$('imports-more').addEventListener('click', () => loadImports(true).catch((e) => say(describe(e))));

async function deleteImport(id, citizens) {
  if (!confirm(t('Delete import {id} and its {citizens}? This cannot be undone.', { id, citizens: count('citizens', citizens) }))) return;
  try {
    await api('DELETE', `/imports/${id}`);
    say(t('Import {id} deleted.', { id }));
    if (location.hash !== '#/') location.hash = '#/';
    else await loadImports();
  } catch (e) {
    say(t('Import {id} was not deleted: {why}', { id, why: describe(e) }));
  }
}

// ---- upload ----------------------------------------------------------------

function showUploadErrors(error) {
  const box = $('upload-errors');
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  const item = document.createElement('p');
  item.className = 'error-item';
  if (error instanceof ApiError && error.error) {
    const { field, citizen_id: citizen, code } = error.error;
    item.dataset.field = field ?? '';
    item.dataset.citizen = citizen ?? '';
    item.dataset.code = code ?? '';
    if (citizen != null) {
      const who = document.createElement('strong');
      who.textContent = t('Citizen {id}', { id: citizen });
      item.append(who, ' · ');
    }
    if (field) {
      const what = document.createElement('code');
      what.textContent = field;
      item.append(what, ': ');
    }
    // The service's own words, in English whatever the page's language.
    const why = document.createElement('span');
    why.lang = 'en';
    why.textContent = reason(error.error);
    item.append(why);
  } else {
    item.textContent = error.message;
  }
  box.append(item);
  box.hidden = false;
}

/** The import name a file is stored under: its name, cut to the API's 256 characters, no control characters. */
function importName(file) {
  return [...file.name.replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ')].slice(0, 256).join('');
}

/** SHA-256 of the file in hex, as the service's `digest`; null where the browser has no
 *  Web Crypto (a page served over plain HTTP from another machine). */
async function digestOf(file) {
  if (!globalThis.crypto?.subtle) return null;
  const hash = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
  return [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

let pendingFile = null;

function hideDuplicate() {
  $('upload-duplicate').hidden = true;
  pendingFile = null;
}

/** Checks whether the file is stored already (by its digest) and asks before storing it again. */
async function upload(file) {
  showUploadErrors(null);
  hideDuplicate();
  $('upload-result').textContent = t('Checking {file}…', { file: file.name });
  let digest = null;
  let stored = null;
  try {
    digest = await digestOf(file);
    if (digest) stored = (await api('GET', `/imports?digest=${digest}&limit=1`)).imports[0] ?? null;
  } catch (e) {
    $('upload-result').textContent = t('{file} was not sent: {why}', { file: file.name, why: describe(e) });
    return;
  }
  if (stored) {
    pendingFile = file;
    const named = stored.name ? ` (${stored.name})` : '';
    $('duplicate-text').textContent = t('This file is already stored as import {id}{named}, {when}. Store it again as a new import?',
      { id: stored.import_id, named, when: when.format(new Date(stored.created_at)) });
    $('duplicate-open').href = `#/imports/${stored.import_id}`;
    $('duplicate-open').textContent = t('Open import {id}', { id: stored.import_id });
    $('upload-result').textContent = '';
    $('upload-duplicate').hidden = false;
    $('duplicate-store').focus();
    return;
  }
  send(file, digest === null);
}

$('duplicate-store').addEventListener('click', () => {
  const file = pendingFile;
  hideDuplicate();
  if (file) send(file, false);
});
$('duplicate-cancel').addEventListener('click', () => {
  const file = pendingFile;
  hideDuplicate();
  if (file) $('upload-result').textContent = t('{file} was not stored again.', { file: file.name });
});
$('duplicate-open').addEventListener('click', hideDuplicate);

/** Stores the file as a new import named after it; `unchecked`: no digest could be computed. */
function send(file, unchecked) {
  const progress = $('upload-progress');
  $('upload-result').textContent = t('Sending {file}…', { file: file.name });
  progress.hidden = false;
  progress.value = 0;
  const xhr = new XMLHttpRequest();
  const name = importName(file);
  xhr.open('POST', name ? `/imports?name=${encodeURIComponent(name)}` : '/imports');
  xhr.setRequestHeader('Content-Type', 'application/json');
  if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
  xhr.upload.addEventListener('progress', (event) => {
    if (event.lengthComputable) progress.value = Math.round((100 * event.loaded) / event.total);
  });
  xhr.addEventListener('load', async () => {
    progress.value = 100;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 201) {
      const id = body.data.import_id;
      $('upload-result').textContent = t('{file}: stored as import {id}.', { file: file.name, id })
        + (unchecked ? t(' (Not checked for an earlier copy: this browser computes digests only on HTTPS or localhost.)') : '');
      await loadImports();
    } else {
      if (xhr.status === 401 || xhr.status === 403) askForToken();
      $('upload-result').textContent = t('{file} was not stored (HTTP {status}).', { file: file.name, status: xhr.status });
      showUploadErrors(new ApiError(xhr.status, body));
    }
    progress.hidden = true;
  });
  xhr.addEventListener('error', () => {
    $('upload-result').textContent = t('{file} was not sent: the service did not answer.', { file: file.name });
    progress.hidden = true;
  });
  xhr.send(file);
}

$('file').addEventListener('change', () => {
  const [file] = $('file').files;
  if (file) upload(file);
  $('file').value = '';
});
const drop = $('drop');
drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('over');
  const [file] = event.dataTransfer.files;
  if (file) upload(file);
});

// ---- one import ------------------------------------------------------------

const view = {
  id: null,
  citizens: [],
  haystack: [],
  byId: new Map(),
  birthdays: null,
  towns: [],
  sort: { key: 'citizen_id', ascending: true },
  page: 0,
  // A month picked on the presents chart: only the citizens buying presents then.
  month: null,
  // GET /imports/{id}: the import's size decides whether it is loaded whole.
  info: null,
  // A big import: the page of citizens shown, and the cursor of each page reached so far.
  big: false,
  rows: [],
  cursors: [null],
  // Bumped by every read of a big import's page: an answer to an older one is dropped.
  reading: 0,
  // Where the page the address names starts (a big import's cursor, or a position among a month's buyers).
  at: null,
};

const COLUMNS = [
  ['citizen_id', 'Id', 'num'],
  ['name', 'Name'],
  ['town', 'Town'],
  ['street', 'Street'],
  ['building', 'Building'],
  ['apartment', 'Apt.', 'num'],
  ['birth_date', 'Born'],
  ['gender', 'Gender'],
  ['relatives', 'Relatives'],
];

/** DD.MM.YYYY as YYYYMMDD, to sort by. */
const dateKey = (d) => Number(d.slice(6) + d.slice(3, 5) + d.slice(0, 2));

/** What a citizen is searched in: name, town and street, lowercased. */
const haystackOf = (c) => `${c.name}\n${c.town}\n${c.street}`.toLocaleLowerCase(locale);

/** The filter as typed, trimmed and lowercased. */
const wantedText = () => $('citizens-filter').value.trim().toLocaleLowerCase(locale);

/**
 * Whether the search `wanted` finds a citizen: the service's rule (GET
 * …/citizens?q=, src/domain/search.rs): a whole number is a citizen's id;
 * other text is looked for in the name, town and street.
 */
const found = (wanted, c, haystack = haystackOf(c)) => (/^\d+$/.test(wanted)
  ? Number(wanted) === c.citizen_id : haystack.includes(wanted));

function sortedFiltered() {
  const wanted = wantedText();
  let rows = view.citizens;
  if (wanted) rows = rows.filter((c, i) => found(wanted, c, view.haystack[i]));
  if (view.month != null) {
    const buyers = new Set((view.birthdays[String(view.month)] ?? []).map((e) => e.citizen_id));
    rows = rows.filter((c) => buyers.has(c.citizen_id));
  }
  const { key, ascending } = view.sort;
  // The service's order (src/domain/order.rs: the collation for Russian, in
  // either language), so a small import sorts as a big one does.
  const collator = new Intl.Collator('ru');
  const value = key === 'birth_date' ? (c) => dateKey(c.birth_date)
    : key === 'relatives' ? (c) => c.relatives.length : (c) => c[key];
  const order = ascending ? 1 : -1;
  return [...rows].sort((a, b) => {
    const x = value(a);
    const y = value(b);
    const c = typeof x === 'string' ? collator.compare(x, y) : x - y;
    return order * (c || a.citizen_id - b.citizen_id);
  });
}

function drawHead() {
  const tr = $('citizens').tHead.rows[0];
  tr.replaceChildren();
  for (const [key, title, cls] of COLUMNS) {
    const th = document.createElement('th');
    th.scope = 'col';
    if (cls) th.className = cls;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'sort';
    button.textContent = t(title);
    const active = view.sort.key === key;
    th.setAttribute('aria-sort', active ? (view.sort.ascending ? 'ascending' : 'descending') : 'none');
    if (active) button.textContent += view.sort.ascending ? ' ▲' : ' ▼';
    button.addEventListener('click', () => {
      view.sort = { key, ascending: active ? !view.sort.ascending : true };
      view.page = 0;
      drawHead();
      if (view.big) {
        // The service sorts (GET …/citizens?sort=): the first time, in seconds.
        $('citizens-count').textContent = t('Sorting…');
        reloadBig();
        return;
      }
      drawTable();
      saveState();
    });
    th.append(button);
    tr.append(th);
  }
  const th = document.createElement('th');
  const hidden = document.createElement('span');
  hidden.className = 'visually-hidden';
  hidden.textContent = t('Edit');
  th.append(hidden);
  tr.append(th);
}

function drawTable() {
  const rows = view.big ? view.rows : sortedFiltered();
  // A big import searched: how many match is not known until the last page.
  const total = view.big ? bigTotal() : rows.length;
  const pages = Math.max(1, Math.ceil((total ?? 0) / PAGE));
  // A big import's page is where its read started (the count may be unknown).
  if (!view.big) view.page = Math.min(view.page, pages - 1);
  const shown = view.big ? rows : rows.slice(view.page * PAGE, (view.page + 1) * PAGE);
  const body = $('citizens').tBodies[0];
  body.replaceChildren(...shown.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.citizenId = c.citizen_id;
    for (const [key, , cls] of COLUMNS) {
      const td = document.createElement('td');
      if (cls) td.className = cls;
      const v = c[key];
      if (key === 'relatives') {
        // Each relative opens that citizen.
        v.forEach((id, i) => {
          if (i > 0) td.append(', ');
          td.append(citizenButton(id, String(id), t('Show citizen {id}, {name}', { id, name: view.byId.get(id)?.name ?? '' })));
        });
      } else {
        td.textContent = typeof v === 'number' ? numbers.format(v) : key === 'gender' ? t(v) : v;
      }
      tr.append(td);
    }
    const td = document.createElement('td');
    const edit = document.createElement('button');
    edit.type = 'button';
    edit.className = 'small';
    edit.textContent = t('Edit');
    edit.setAttribute('aria-label', t('Edit citizen {id}, {name}', { id: c.citizen_id, name: c.name }));
    edit.addEventListener('click', () => openEditor(c));
    td.append(edit);
    tr.append(td);
    return tr;
  }));
  const range = `${numbers.format(view.page * PAGE + (rows.length ? 1 : 0))}–${numbers.format(view.page * PAGE + rows.length)}`;
  if (!view.big) {
    $('citizens-count').textContent = count('citizens shown', view.citizens.length, { shown: numbers.format(rows.length) });
  } else if (total != null) {
    $('citizens-count').textContent = count('citizens shown', total, { shown: range });
  } else {
    $('citizens-count').textContent = view.cursors[view.page + 1] == null
      ? t('{shown}: the last found', { shown: range }) : t('{shown} found so far', { shown: range });
  }
  $('page-info').textContent = total == null
    ? t('Page {page}', { page: numbers.format(view.page + 1) })
    : t('Page {page} of {pages}', { page: numbers.format(view.page + 1), pages: numbers.format(pages) });
  $('page-prev').disabled = view.page === 0;
  $('page-next').disabled = view.big ? view.cursors[view.page + 1] == null : view.page >= pages - 1;
  const chip = $('month-filter');
  chip.hidden = view.month == null;
  if (view.month != null) {
    const name = monthLong(view.month);
    chip.textContent = t('Buying presents in {month} ×', { month: name });
    chip.setAttribute('aria-label', t('Show every month again (now: buying presents in {month})', { month: name }));
  }
}

/** The table's filter, month, sort and page, kept in the address: a view can be shared. */
function saveState() {
  if (view.id == null) return;
  const params = new URLSearchParams();
  const q = $('citizens-filter').value.trim();
  if (q) params.set('q', q);
  if (view.month != null) params.set('month', view.month);
  if (view.sort.key !== 'citizen_id' || !view.sort.ascending) {
    params.set('sort', `${view.sort.ascending ? '' : '-'}${view.sort.key}`);
  }
  if (view.page > 0) params.set('page', view.page + 1);
  // A big import's page is found again by where it starts.
  if (view.big) view.at = view.page > 0 ? view.cursors[view.page] : null;
  if (view.big && view.at != null) params.set('at', view.at);
  const query = params.toString();
  history.replaceState(null, '', `#/imports/${view.id}${query ? `?${query}` : ''}`);
}

/** The state of `saveState` read back from the address (what is not valid is left out). */
function readState(query) {
  const params = new URLSearchParams(query);
  $('citizens-filter').value = params.get('q') ?? '';
  const month = Number(params.get('month'));
  view.month = Number.isInteger(month) && month >= 1 && month <= 12 ? month : null;
  const sort = params.get('sort') ?? '';
  const key = sort.replace(/^-/, '');
  view.sort = COLUMNS.some(([k]) => k === key)
    ? { key, ascending: !sort.startsWith('-') } : { key: 'citizen_id', ascending: true };
  const page = Number(params.get('page'));
  view.page = Number.isInteger(page) && page > 1 ? page - 1 : 0;
  view.at = params.get('at');
}

/** A month's name (1–12), in full, in the browser's language. */
const monthFormat = new Intl.DateTimeFormat(locale, { month: 'long', timeZone: 'UTC' });
const monthLong = (month) => monthFormat.format(new Date(Date.UTC(2000, month - 1, 1)));

/** A button, shown as a link, that opens citizen `id` (`showCitizen`), with `label` for screen readers if given. */
function citizenButton(id, text, label) {
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'link';
  open.textContent = text;
  if (label) open.setAttribute('aria-label', label);
  open.addEventListener('click', () => showCitizen(id));
  return open;
}

/** Shows one citizen: the table filtered to its id, its row in view. */
async function showCitizen(id) {
  $('citizens-filter').value = String(id);
  view.month = null;
  view.page = 0;
  if (view.big) {
    clearTimeout(typing);
    view.cursors = [null];
    try {
      if (!await loadBigPage(0)) return;
    } catch (e) {
      say(describe(e));
      return;
    }
  }
  drawTable();
  saveState();
  const row = $('citizens').querySelector(`tbody tr[data-citizen-id="${id}"]`);
  row?.scrollIntoView({ block: 'nearest' });
  row?.querySelector('button')?.focus();
}

/** The bar in focus: its month's total, and its top buyers, each opening that citizen. */
function showMonth(label, top) {
  const box = $('birthdays-detail');
  box.replaceChildren(`${label}.`);
  if (top.length === 0) return;
  box.append(` ${t('Buying most:')} `);
  top.forEach((e, i) => {
    if (i > 0) box.append('; ');
    const name = view.byId.get(e.citizen_id)?.name ?? `#${e.citizen_id}`;
    box.append(citizenButton(e.citizen_id, `${name} (${e.citizen_id})`), `: ${numbers.format(e.presents)}`);
  });
}

// A search typed into a big import's filter, waiting for the typing to pause.
let typing = 0;

/** Shows a big import's page `page` once read (unless a later read has taken its place). */
function showBigPage(page) {
  loadBigPage(page).then((current) => {
    if (!current) return;
    drawTable();
    saveState();
  }).catch((e) => say(describe(e)));
}

/** A big import's table from its first page again, as the filter and month now say. */
function reloadBig() {
  // A search still waiting for the typing to pause is this one now.
  clearTimeout(typing);
  view.cursors = [null];
  showBigPage(0);
}

$('citizens-filter').addEventListener('input', () => {
  view.page = 0;
  if (view.big) {
    // Each search reads the service: once the typing pauses.
    clearTimeout(typing);
    typing = setTimeout(reloadBig, 300);
    return;
  }
  drawTable();
  saveState();
});

/** Whether a big import's table lists a month's buyers by id, as the birthdays answer has them (else the service walks its sorted order). */
const byBuyers = () => view.month != null && view.sort.key === 'citizen_id' && view.sort.ascending;

/** The ids of a month's buyers, ascending (as the birthdays answer lists them). */
const buyersOf = (month) => (view.birthdays[String(month)] ?? []).map((e) => e.citizen_id);

/** How many citizens a big import's table has with the month and filter as they are; null when not known. */
function bigTotal() {
  if (wantedText()) return null;
  return view.month == null ? view.info.citizens : buyersOf(view.month).length;
}

/**
 * Up to `size` citizens of a big import from `start` on, as the filter and month
 * say: `{rows, next}`, `next` where the rows after them start (null: none).
 * A month's buyers by id come from the birthdays answer, by their position in
 * it, read by id (?ids=) and searched here by the same rule. Otherwise `start`
 * is the service's cursor, and the search, the sort and the month are the
 * service's (GET …/citizens?q=&sort=&month=, which looks at a stretch of the
 * import per request). `progress(n)` is told the count found so far while a
 * search goes on.
 */
async function bigRows(start, size = PAGE, progress = () => {}) {
  const typed = $('citizens-filter').value.trim();
  const rows = [];
  if (byBuyers()) {
    const buyers = buyersOf(view.month);
    const wanted = wantedText();
    let at = start ?? 0;
    while (rows.length < size && at < buyers.length) {
      const ids = buyers.slice(at, at + (wanted ? 100 : Math.min(100, size - rows.length)));
      const answer = await api('GET', `/imports/${view.id}/citizens?ids=${ids.join(',')}`);
      const byId = new Map(answer.map((c) => [c.citizen_id, c]));
      for (const id of ids) {
        at += 1;
        const c = byId.get(id);
        if (c && (!wanted || found(wanted, c))) rows.push(c);
        if (rows.length === size) break;
      }
    }
    return { rows, next: at < buyers.length ? at : null };
  }
  let cursor = start;
  const { key, ascending } = view.sort;
  do {
    const query = new URLSearchParams({ limit: Math.min(10_000, size - rows.length) });
    if (typed) query.set('q', typed);
    if (key !== 'citizen_id' || !ascending) query.set('sort', `${ascending ? '' : '-'}${key}`);
    if (view.month != null) query.set('month', view.month);
    if (cursor) query.set('cursor', cursor);
    const answer = await api('GET', `/imports/${view.id}/citizens?${query}`, undefined, true);
    rows.push(...answer.data);
    cursor = answer.next_cursor;
    if ((typed || view.month != null) && cursor) progress(rows.length);
  } while (cursor && rows.length < size);
  return { rows, next: cursor };
}

/**
 * Reads a big import's page `page` (0-based; the first when where it starts is
 * not known): true when it is the page shown now, false when a later read
 * has taken its place.
 */
async function loadBigPage(page) {
  const reading = ++view.reading;
  const start = view.cursors[page] === undefined ? 0 : page;
  const { rows, next } = await bigRows(view.cursors[start], PAGE, (n) => {
    if (reading === view.reading) $('citizens-count').textContent = t('Searching… {found} found so far', { found: numbers.format(n) });
  });
  if (reading !== view.reading) return false;
  view.rows = rows;
  view.byId = new Map(rows.map((c) => [c.citizen_id, c]));
  view.cursors[start + 1] = next;
  view.page = start;
  return true;
}

const turn = (step) => {
  if (view.big) {
    showBigPage(view.page + step);
    return;
  }
  view.page += step;
  drawTable();
  saveState();
};
$('page-prev').addEventListener('click', () => turn(-1));
$('page-next').addEventListener('click', () => turn(1));
/** The table from its first page, with `month`'s buyers only (null: everyone). */
function pickMonth(month) {
  view.month = month;
  view.page = 0;
  if (view.big) {
    reloadBig();
    return;
  }
  drawTable();
  saveState();
}
$('month-filter').addEventListener('click', () => pickMonth(null));

function drawCharts() {
  // The towns first: the presents chart takes the height their card leaves.
  drawPercentiles($('percentiles-chart'), view.towns, {
    locale, sort: $('towns-sort').value, filter: $('towns-filter').value,
  });
  drawBirthdays($('birthdays-chart'), view.birthdays, {
    locale,
    nameOf: (id) => view.byId.get(id)?.name ?? `#${id}`,
    onFocus: showMonth,
    onPick: pickMonth,
  });
}

$('towns-sort').addEventListener('change', drawCharts);
// Charts are drawn at their container's width: again when it changes.
const redrawShown = () => { if (view.birthdays && !$('import-view').hidden) drawCharts(); };
let resizing = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizing);
  resizing = setTimeout(redrawShown, 150);
});
$('towns-filter').addEventListener('input', drawCharts);
// And at the printed page's width when printing, then back.
window.matchMedia('print').addEventListener('change', redrawShown);

// ---- taking the numbers away: CSV and print --------------------------------

/**
 * One CSV cell (RFC 4180). A text that a spreadsheet would run as a formula
 * (it starts with = + - @, a tab or a carriage return) gets a leading
 * apostrophe, so a name cannot run code in the analyst's spreadsheet.
 */
function csvCell(value) {
  let text = String(value);
  if (typeof value === 'string' && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * Downloads rows as a CSV file: UTF-8 with a byte order mark, so spreadsheet
 * programs read Cyrillic right, and CRLF line ends.
 */
function downloadCsv(name, header, rows) {
  const text = `\ufeff${[header, ...rows].map((row) => row.map(csvCell).join(',')).join('\r\n')}\r\n`;
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv;charset=utf-8' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// The API's own field names head the columns; relatives are ids separated by spaces.
// A big import's: what the filter and month find, by id, read from the service, up to WHOLE rows.
$('export-citizens').addEventListener('click', async () => {
  const keys = COLUMNS.map(([key]) => key);
  let rows = view.citizens;
  let more = false;
  if (view.big) {
    $('export-citizens').disabled = true;
    say(t('Reading the citizens for the CSV…'));
    try {
      const answer = await bigRows(null, WHOLE);
      rows = answer.rows;
      more = answer.next != null;
    } catch (e) {
      say(describe(e));
      return;
    } finally {
      $('export-citizens').disabled = false;
    }
  } else {
    rows = sortedFiltered();
  }
  downloadCsv(`import-${view.id}-citizens.csv`, keys, rows.map((c) =>
    keys.map((key) => (key === 'relatives' ? c.relatives.join(' ') : c[key]))));
  say(more ? t('The CSV holds the first {n} citizens found: narrow the search for the rest.', { n: numbers.format(WHOLE) }) : '');
});

// A row per citizen and month, as GET …/citizens/birthdays answers.
$('export-birthdays').addEventListener('click', () => {
  const rows = [];
  for (let month = 1; month <= 12; month += 1) {
    for (const { citizen_id: id, presents } of view.birthdays[month] ?? []) rows.push([month, id, presents]);
  }
  downloadCsv(`import-${view.id}-presents-per-month.csv`, ['month', 'citizen_id', 'presents'], rows);
});

$('export-percentiles').addEventListener('click', () => {
  downloadCsv(`import-${view.id}-ages-per-town.csv`, ['town', 'p50', 'p75', 'p99'],
    view.towns.map((town) => [town.town, town.p50, town.p75, town.p99]));
});

$('print-report').addEventListener('click', () => window.print());

async function loadImport(id) {
  const [info, birthdays, towns] = await Promise.all([
    api('GET', `/imports/${id}`),
    api('GET', `/imports/${id}/citizens/birthdays`),
    api('GET', `/imports/${id}/towns/stat/percentile/age`),
  ]);
  view.id = id;
  view.info = info;
  view.big = info.citizens > WHOLE;
  view.citizens = view.big ? [] : await api('GET', `/imports/${id}/citizens`);
  view.byId = new Map(view.citizens.map((c) => [c.citizen_id, c]));
  // What the filter searches, lowered once per load rather than per keystroke.
  view.haystack = view.citizens.map(haystackOf);
  view.birthdays = birthdays;
  if (view.big) {
    // The page the address names, found by where it starts (else the first).
    view.cursors = [null];
    if (view.page > 0 && view.at) view.cursors[view.page] = byBuyers() ? Number(view.at) : view.at;
    await loadBigPage(view.page);
  }
  $('big-note').hidden = !view.big;
  $('big-note').textContent = view.big
    ? t('This import has {citizens}: the table shows them {page} at a time, read from the service, which also searches and sorts (the first sort by a column takes a few seconds); its CSV holds up to {whole} of them.',
      { citizens: count('citizens', info.citizens), page: PAGE, whole: numbers.format(WHOLE) })
    : '';
  view.towns = towns;
  $('import-title').textContent = info.name ? t('Import {id} · {name}', { id, name: info.name }) : t('Import {id}', { id });
  const presents = Object.values(birthdays).flat().reduce((s, e) => s + e.presents, 0);
  $('import-summary').textContent = t('{citizens} in {towns}; {presents} a year.', {
    citizens: count('citizens', info.citizens), towns: count('in towns', towns.length), presents: count('presents', presents),
  });
  drawCharts();
  drawHead();
  drawTable();
  await fillCompareWith(id);
}

// ---- editing one citizen ---------------------------------------------------

let editing = null;
const form = $('edit-form');

function openEditor(citizen) {
  editing = citizen;
  $('editor-title').textContent = t('Citizen {id}', { id: citizen.citizen_id });
  for (const field of ['name', 'town', 'street', 'building', 'apartment', 'birth_date', 'gender']) {
    form.elements[field].value = citizen[field];
  }
  form.elements.relatives.value = citizen.relatives.join(', ');
  for (const p of form.querySelectorAll('.field-error')) p.textContent = '';
  $('editor').showModal();
  form.elements.name.focus();
}

$('edit-cancel').addEventListener('click', () => $('editor').close());

/** The fields that differ from the citizen, as the PATCH body; numbers as numbers. */
function changes(citizen) {
  const body = {};
  for (const field of ['name', 'town', 'street', 'building', 'birth_date', 'gender']) {
    const value = form.elements[field].value;
    if (value !== citizen[field]) body[field] = value;
  }
  const apartment = form.elements.apartment.value.trim();
  if (apartment !== String(citizen.apartment)) {
    body.apartment = /^\d+$/.test(apartment) ? Number(apartment) : apartment;
  }
  const relatives = form.elements.relatives.value.split(/[\s,;]+/).filter(Boolean)
    .map((v) => (/^\d+$/.test(v) ? Number(v) : v));
  const unique = [...new Set(relatives)].sort((a, b) => a - b);
  if (unique.join(',') !== citizen.relatives.join(',')) body.relatives = unique;
  return body;
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  for (const p of form.querySelectorAll('.field-error')) p.textContent = '';
  const body = changes(editing);
  if (Object.keys(body).length === 0) {
    $('editor').close();
    return;
  }
  try {
    await api('PATCH', `/imports/${view.id}/citizens/${editing.citizen_id}`, body);
    $('editor').close();
    await loadImport(view.id);
    say(t('Citizen {id} saved; the charts show the change.', { id: editing.citizen_id }));
  } catch (e) {
    const field = e instanceof ApiError ? e.error?.field ?? '' : '';
    const target = form.querySelector(`.field-error[data-for="${field}"]`)
      ?? form.querySelector('.field-error[data-for=""]');
    const fromService = e instanceof ApiError && e.error?.field;
    target.textContent = fromService ? reason(e.error) : describe(e);
    // The service's own words are English whatever the page's language.
    if (fromService) target.lang = 'en';
    else target.removeAttribute('lang');
    form.elements[field]?.focus();
  }
});

$('delete-import').addEventListener('click', () => deleteImport(view.id, view.info.citizens));

// ---- comparing two imports -------------------------------------------------

/** The other imports (up to 100, newest first) in the "Compare with" list. */
async function fillCompareWith(id) {
  const select = $('compare-with');
  select.replaceChildren(select.options[0]);
  select.value = '';
  const { imports } = await api('GET', '/imports?limit=100');
  for (const info of imports) {
    if (info.import_id === id) continue;
    const option = document.createElement('option');
    option.value = info.import_id;
    const citizens = count('citizens', info.citizens);
    option.textContent = t('Import {id} ({details})', { id: info.import_id, details: info.name ? `${info.name}, ${citizens}` : citizens });
    select.append(option);
  }
}

$('compare-with').addEventListener('change', () => {
  const other = $('compare-with').value;
  if (other) location.hash = `#/compare/${view.id}/${other}`;
});

const signed = new Intl.NumberFormat(locale, { maximumFractionDigits: 2, signDisplay: 'exceptZero' });
const ages = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });

/** "a → b (±change)", or with "—" for a side that has no value. */
function change(a, b, format) {
  const side = (v) => (v == null ? '—' : format.format(v));
  const delta = a != null && b != null ? ` (${signed.format(Math.round((b - a) * 100) / 100)})` : '';
  return `${side(a)} → ${side(b)}${delta}`;
}

async function loadCompare(a, b) {
  const [monthsA, monthsB, townsA, townsB] = await Promise.all([
    api('GET', `/imports/${a}/citizens/birthdays`),
    api('GET', `/imports/${b}/citizens/birthdays`),
    api('GET', `/imports/${a}/towns/stat/percentile/age`),
    api('GET', `/imports/${b}/towns/stat/percentile/age`),
  ]);
  $('compare-title').textContent = t('Import {a} and import {b}', { a, b });
  for (const th of document.querySelectorAll('.compare-a')) th.textContent = t('Import {id}', { id: a });
  for (const th of document.querySelectorAll('.compare-b')) th.textContent = t('Import {id}', { id: b });
  const total = (months, m) => (months[String(m)] ?? []).reduce((sum, e) => sum + e.presents, 0);
  $('compare-months').tBodies[0].replaceChildren(...[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12].map((m) => {
    const [x, y] = [total(monthsA, m), total(monthsB, m)];
    const tr = document.createElement('tr');
    Object.assign(tr.dataset, { month: m, a: x, b: y });
    for (const [text, cls] of [[monthLong(m)],
      [numbers.format(x), 'num'], [numbers.format(y), 'num'], [signed.format(y - x), 'num']]) {
      const td = document.createElement('td');
      if (cls) td.className = cls;
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  const byTown = new Map();
  for (const town of townsA) byTown.set(town.town, { town: town.town, a: town });
  for (const town of townsB) byTown.set(town.town, { ...(byTown.get(town.town) ?? { town: town.town }), b: town });
  const collator = new Intl.Collator(locale);
  const rows = [...byTown.values()].sort((x, y) => collator.compare(x.town, y.town));
  $('compare-towns').tBodies[0].replaceChildren(...rows.map(({ town, a: x, b: y }) => {
    const tr = document.createElement('tr');
    tr.dataset.town = town;
    for (const side of ['a', 'b']) {
      const stats = side === 'a' ? x : y;
      if (stats) for (const p of ['p50', 'p75', 'p99']) tr.dataset[`${side}${p}`] = stats[p];
    }
    const name = document.createElement('th');
    name.scope = 'row';
    name.textContent = town;
    tr.append(name);
    for (const p of ['p50', 'p75', 'p99']) {
      const td = document.createElement('td');
      td.className = 'num';
      td.textContent = change(x?.[p], y?.[p], ages);
      tr.append(td);
    }
    return tr;
  }));
  const sum = (months) => Object.values(months).flat().reduce((s2, e) => s2 + e.presents, 0);
  $('compare-summary').textContent = t('Presents a year: {change}; towns: {a} and {b}.', {
    change: change(sum(monthsA), sum(monthsB), numbers), a: numbers.format(townsA.length), b: numbers.format(townsB.length),
  });
}

// ---- routing ---------------------------------------------------------------

async function route() {
  const compare = /^#\/compare\/(\d+)\/(\d+)$/.exec(location.hash);
  const match = /^#\/imports\/(\d+)(?:\?(.*))?$/.exec(location.hash);
  $('imports-view').hidden = Boolean(match || compare);
  $('import-view').hidden = !match;
  $('compare-view').hidden = !compare;
  try {
    if (compare) {
      say(t('Loading…'));
      await loadCompare(Number(compare[1]), Number(compare[2]));
      say('');
    } else if (match) {
      say(t('Loading…'));
      readState(match[2] ?? '');
      await loadImport(Number(match[1]));
      say('');
    } else {
      await loadImports();
    }
  } catch (e) {
    say(e.status === 404 ? t('No such import (it may have been deleted).') : describe(e));
  }
}

window.addEventListener('hashchange', route);
route();
