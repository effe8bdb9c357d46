// The page's words in Russian and English. English is the key: a string the
// page shows is written once, in English, where it is used, and looked up
// here. The language is the browser's first of Russian and English
// (navigator.languages), or the one chosen on the page (kept in localStorage).

const LANGUAGES = ['en', 'ru'];
const CHOSEN = 'gifts-language';

/** The language tags the browser prefers, most wanted first. */
const preferred = () => (navigator.languages?.length ? navigator.languages : [navigator.language || 'en']);
const primary = (tag) => String(tag).toLowerCase().split('-')[0];

function pick() {
  let saved = null;
  try { saved = localStorage.getItem(CHOSEN); } catch { /* storage blocked: the browser's choice */ }
  if (LANGUAGES.includes(saved)) return saved;
  return preferred().map(primary).find((l) => LANGUAGES.includes(l)) ?? 'en';
}

/** 'en' or 'ru'. */
export const language = pick();
/** The locale numbers, dates and months are written in: the browser's own tag for the language (en-GB, ru-RU), else the language. */
export const locale = preferred().find((tag) => primary(tag) === language) ?? language;

/** Keeps `lang` as the page's language from now on. */
export function choose(lang) {
  try { localStorage.setItem(CHOSEN, lang); } catch { /* storage blocked: this page view only */ }
}

const RU = {
  // index.html
  'gifts — imports, presents and ages': 'gifts — выгрузки, подарки и возрасты',
  'Skip to content': 'Перейти к содержанию',
  'Presents per month and ages per town, for each import of citizens': 'Подарки по месяцам и возрасты по городам для каждой выгрузки жителей',
  'Language': 'Язык',
  'Access token': 'Токен доступа',
  'Use': 'Войти',
  'Imports': 'Выгрузки',
  'Drop an import file here, or': 'Перетащите сюда файл выгрузки или',
  'Choose a file…': 'Выберите файл…',
  'Store it again': 'Сохранить ещё раз',
  'Open it': 'Открыть',
  'Cancel': 'Отмена',
  'Imports, newest first': 'Выгрузки, сначала новые',
  'Import': 'Выгрузка',
  'Citizens': 'Жители',
  'Stored': 'Сохранена',
  'Version': 'Версия',
  'Actions': 'Действия',
  'No imports yet.': 'Выгрузок пока нет.',
  'Older imports': 'Более ранние выгрузки',
  '← All imports': '← Все выгрузки',
  'Compare': 'Сравнение',
  'Presents per month': 'Подарки по месяцам',
  'All presents bought in each month, in each import, and the change.': 'Все подарки, купленные в каждом месяце, в каждой из выгрузок, и изменение.',
  'Presents per month in both imports': 'Подарки по месяцам в обеих выгрузках',
  'Month': 'Месяц',
  'Change': 'Изменение',
  'Ages per town': 'Возрасты по городам',
  "Each town's p50, p75 and p99 in years: first import → second (change); — where a town has no citizens.": 'p50, p75 и p99 каждого города в годах: первая выгрузка → вторая (изменение); — где в городе нет жителей.',
  'Ages per town in both imports': 'Возрасты по городам в обеих выгрузках',
  'Town': 'Город',
  'Compare with': 'Сравнить с',
  'another import…': 'другой выгрузкой…',
  'All presents bought in each month; hover or focus a bar for the citizens who buy most.': 'Все подарки, купленные в каждом месяце; наведите указатель на столбец или перейдите к нему, чтобы увидеть, кто покупает больше всех.',
  'Download presents per month as CSV': 'Скачать подарки по месяцам в CSV',
  'Ages today: median (p50), p75 and p99, one row per town.': 'Возраст на сегодня: медиана (p50), p75 и p99, по строке на город.',
  'Sort': 'Порядок',
  'by median age': 'по медиане возраста',
  'by town': 'по городу',
  'by p99': 'по p99',
  'filter': 'фильтр',
  'Download ages per town as CSV': 'Скачать возрасты по городам в CSV',
  'Filter by id, name, town or street': 'Поиск по номеру, имени, городу или улице',
  'e.g. Москва': 'например, Москва',
  'Download the citizens shown (filtered and sorted) as CSV': 'Скачать показанных жителей (с фильтром и порядком) в CSV',
  'Print report…': 'Напечатать отчёт…',
  'Citizens pages': 'Страницы жителей',
  '← Previous': '← Назад',
  'Next →': 'Далее →',
  'Delete this import…': 'Удалить эту выгрузку…',
  'Citizen': 'Житель',
  'Name': 'Имя',
  'Street': 'Улица',
  'Building': 'Дом',
  'Apartment': 'Квартира',
  'Birth date (DD.MM.YYYY)': 'Дата рождения (ДД.ММ.ГГГГ)',
  'Gender': 'Пол',
  'male': 'мужской',
  'female': 'женский',
  'Relatives (citizen ids, separated by commas)': 'Родственники (номера жителей через запятую)',
  'Save': 'Сохранить',
  // app.js
  'Id': '№',
  'Apt.': 'Кв.',
  'Born': 'Дата рождения',
  'Relatives': 'Родственники',
  'Edit': 'Изменить',
  'Import {id}': 'Выгрузка {id}',
  'Import {id} · {name}': 'Выгрузка {id} · {name}',
  'Delete…': 'Удалить…',
  'Delete import {id}': 'Удалить выгрузку {id}',
  'Delete import {id} and its {citizens}? This cannot be undone.': 'Удалить выгрузку {id} ({citizens})? Это нельзя отменить.',
  'Import {id} deleted.': 'Выгрузка {id} удалена.',
  'Import {id} was not deleted: {why}': 'Выгрузка {id} не удалена: {why}',
  'Citizen {id}': 'Житель {id}',
  'citizen {id}': 'житель {id}',
  'This service asks for an access token: enter it above.': 'Сервис просит токен доступа: введите его выше.',
  'This token may not do that: ask for one with more rights.': 'Этому токену это не разрешено: попросите токен с бо́льшими правами.',
  'Checking {file}…': 'Проверяем {file}…',
  '{file} was not sent: {why}': '{file} не отправлен: {why}',
  'This file is already stored as import {id}{named}, {when}. Store it again as a new import?': 'Этот файл уже сохранён как выгрузка {id}{named}, {when}. Сохранить его ещё раз как новую выгрузку?',
  'Open import {id}': 'Открыть выгрузку {id}',
  '{file} was not stored again.': '{file} не сохранён повторно.',
  'Sending {file}…': 'Отправляем {file}…',
  '{file}: stored as import {id}.': '{file}: сохранён как выгрузка {id}.',
  ' (Not checked for an earlier copy: this browser computes digests only on HTTPS or localhost.)': ' (Не проверен на повтор: браузер считает контрольные суммы только по HTTPS или на localhost.)',
  '{file} was not stored (HTTP {status}).': '{file} не сохранён (HTTP {status}).',
  '{file} was not sent: the service did not answer.': '{file} не отправлен: сервис не ответил.',
  'Show citizen {id}, {name}': 'Показать жителя {id}, {name}',
  'Edit citizen {id}, {name}': 'Изменить жителя {id}, {name}',
  'Page {page} of {pages}': 'Страница {page} из {pages}',
  'Buying presents in {month} ×': 'Покупают подарки: {month} ×',
  'Show every month again (now: buying presents in {month})': 'Показать все месяцы (сейчас: покупают подарки, {month})',
  'Buying most:': 'Больше всех покупают:',
  '{citizens} in {towns}; {presents} a year.': '{citizens} в {towns}; {presents} в год.',
  'Citizen {id} saved; the charts show the change.': 'Житель {id} сохранён; графики показывают изменение.',
  'Import {id} ({details})': 'Выгрузка {id} ({details})',
  'Import {a} and import {b}': 'Выгрузка {a} и выгрузка {b}',
  'Presents a year: {change}; towns: {a} and {b}.': 'Подарков в год: {change}; городов: {a} и {b}.',
  'Loading…': 'Загрузка…',
  'This import has {citizens}: the table shows them {page} at a time, read from the service, which also searches and sorts (the first sort by a column takes a few seconds); its CSV holds up to {whole} of them.': 'В этой выгрузке {citizens}: таблица показывает их по {page} за раз, читая их у сервиса, который и ищет, и сортирует (первая сортировка по столбцу занимает несколько секунд); в её CSV — до {whole} из них.',
  'Reading the citizens for the CSV…': 'Читаю жителей для CSV…',
  'Sorting…': 'Сортирую…',
  'The CSV holds the first {n} citizens found: narrow the search for the rest.': 'В CSV первые {n} найденных жителей: сузьте поиск, чтобы получить остальных.',
  '{shown}: the last found': '{shown}: найдены последние',
  '{shown} found so far': '{shown}: найдено пока',
  'Page {page}': 'Страница {page}',
  'Searching… {found} found so far': 'Поиск… найдено пока {found}',
  'No such import (it may have been deleted).': 'Такой выгрузки нет (возможно, её удалили).',
  // charts.js
  'Presents': 'Подарки',
  '{month}: {presents}': '{month}: {presents}',
  '{label}. Buying most: {who}': '{label}. Больше всех покупают: {who}',
  'No town matches.': 'Ни один город не подходит.',
  'No citizens.': 'Жителей нет.',
  'Age percentiles per town, on an axis from {from} to {to} years': 'Перцентили возраста по городам, на оси от {from} до {to} лет',
  'Age, years': 'Возраст, лет',
  '{town}: p50 {p50}, p75 {p75}, p99 {p99} years': '{town}: p50 {p50}, p75 {p75}, p99 {p99} лет',
};

// Counted words: the forms Intl.PluralRules names, with {n} for the number.
const COUNTED = {
  en: {
    citizens: { one: '{n} citizen', other: '{n} citizens' },
    'citizens shown': { one: '{shown} of {n} citizen', other: '{shown} of {n} citizens' },
    'in towns': { one: '{n} town', other: '{n} towns' },
    presents: { one: '{n} present', other: '{n} presents' },
  },
  ru: {
    citizens: { one: '{n} житель', few: '{n} жителя', other: '{n} жителей' },
    'citizens shown': { one: '{shown} из {n} жителя', other: '{shown} из {n} жителей' },
    'in towns': { one: '{n} городе', other: '{n} городах' },
    presents: { one: '{n} подарок', few: '{n} подарка', other: '{n} подарков' },
  },
};

const fill = (text, params) => text.replace(/\{(\w+)\}/g, (whole, key) => (key in params ? String(params[key]) : whole));

/** `english` in the page's language, with `{name}`s filled from `params`. */
export function t(english, params = {}) {
  return fill((language === 'ru' ? RU[english] : undefined) ?? english, params);
}

const plurals = new Intl.PluralRules(language);
const counts = new Intl.NumberFormat(locale);

/** `n` things of `what` (a key of COUNTED), the number written for the locale. */
export function count(what, n, params = {}) {
  const forms = COUNTED[language][what];
  const form = forms[plurals.select(n)] ?? forms.other;
  return fill(form, { ...params, n: counts.format(n) });
}

const ATTRIBUTES = ['aria-label', 'placeholder', 'title'];

/** Puts the page's static words (index.html's text and labels) in the page's language. */
export function translatePage(root = document) {
  document.documentElement.lang = language;
  document.title = t(document.title);
  if (language === 'en') return;
  const walker = document.createTreeWalker(root.body ?? root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue.trim();
    if (text && RU[text]) node.nodeValue = node.nodeValue.replace(text, RU[text]);
  }
  for (const element of (root.body ?? root).querySelectorAll(ATTRIBUTES.map((a) => `[${a}]`).join(','))) {
    for (const attribute of ATTRIBUTES) {
      const value = element.getAttribute(attribute);
      if (value && RU[value]) element.setAttribute(attribute, RU[value]);
    }
  }
}
