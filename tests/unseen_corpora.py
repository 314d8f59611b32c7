"""Small corpora in the real CIMA, ManyThings and MERLIN formats, generated fresh from a seed.

Every sentence is built here from word lists and templates (nothing is copied from the bundled
samples or the shared excerpts), so a test can run the pipeline on corpora it has never seen.
`write_unseen_corpora(root, seed)` is deterministic: the same seed writes the same bytes."""
import json
import random
import re
from pathlib import Path

def _pairs(spec: str) -> list:
    "'en|it; en|it' -> [(en, it), ...]"
    return [tuple(p.strip().split("|")) for p in spec.split(";")]

# --- CIMA: an English speaker describes a picture with an Italian prepositional phrase -----------------------
ANIMALS = _pairs("il topo|mouse; la volpe|fox; il pappagallo|parrot; la tartaruga|turtle; il criceto|hamster; la gallina|hen")
THINGS = [("lampada", "lamp", "f"), ("finestra", "window", "f"), ("porta", "door", "f"), ("mensola", "shelf", "f"),
          ("divano", "sofa", "m"), ("cestino", "basket", "m"), ("tappeto", "rug", "m"), ("frigorifero", "fridge", "m")]
COLOURS = [("nero", "nera", "black"), ("bianco", "bianca", "white"), ("rosso", "rossa", "red"), ("giallo", "gialla", "yellow"),
           ("verde", "verde", "green"), ("arancione", "arancione", "orange"), ("marrone", "marrone", "brown")]
PREPS = [("e sotto il", "e sotto la", "is under the", "under"), ("e sopra il", "e sopra la", "is on top of the", "top"),
         ("e accanto al", "e accanto alla", "is next to the", "next"), ("e davanti al", "e davanti alla", "is in front of the", "front"),
         ("e dentro il", "e dentro la", "is inside the", "inside"), ("e dietro il", "e dietro la", "is behind the", "behind")]
OPENERS = ["Describe the picture in Italian, please. ", "Now write the whole sentence in Italian. ",
           'Look at the image. "{prep_en}" is "{prep}". Can you finish the sentence? ']
ASKS = ['What is the Italian word for "{}"?', "how do I say {} in Italian", 'Sorry, what was "{}" again?', "Can you tell me how to say {}?"]
HINTS = ['Sure: "{}" is "{}".', 'Here is a hint. "{}" translates as "{}".', 'You can use "{1}" for "{0}".']
GUESSES = ["{}?", "Is it {}?", "my try: {}", "I think it is {}.", "{}. Is that right?"]
RESPONSES = [  # (tutorActions: question, hint, correction, confirmation, other), text
    ("10000", "Good effort! Which word in your sentence should come right after the noun {noun}?"),
    ("01000", 'Here is a clue: "{noun_en}" is "{noun}", and it is a {gender} word, so check the article.'),
    ("00100", 'Almost there, but in Italian the colour follows the noun, so you should say "{noun} {col}".'),
    ("00010", 'Yes, that is right! The whole sentence is "{answer}", and your word order is perfect.'),
    ("01000", 'Remember that "{prep_en}" becomes "{prep}" when the next word is {gender} and singular.'),
    ("11000", 'What is the Italian word for "{col_en}"? Think about whether it must agree with "{noun}".'),
    ("01000", 'Prova ancora: "{noun_en}" si dice "{noun}" e il colore va sempre dopo il nome.'),
    ("00110", 'Quasi giusto! La frase corretta è "{answer}", con il colore dopo il nome.'),
    ("00001", "Keep going, you are doing really well with these Italian prepositions today."),
    ("01100", 'Careful with the ending of the colour: with a {gender} noun we write "{col}", not another form.'),
]

def _grammar_rules(rng, art, noun, gender, fmt):
    "A `grammarRules` string as CIMA stores it: JSON, JSON with trailing junk, or plain text."
    rules = [[f'{art} ("the") is used because {noun} is a {gender} singular noun.',
              "Every Italian noun has a grammatical gender, and the article must agree with it."],
             ["Colour adjectives are placed after the noun in Italian.", ""],
             ["The preposition joins the two noun phrases of the sentence.", ""]]
    rng.shuffle(rules)
    if fmt == "text": return " ".join(r[0] for r in rules)
    raw = json.dumps(rules, ensure_ascii=False)
    return raw + ', "summ": "", "table": ""}"' if fmt == "extra" else raw

def _cima_exchange(rng) -> dict:
    "One CIMA exchange: a dialogue ending on a student turn, three tutor responses with their actions."
    subj, subj_en = rng.choice(ANIMALS)
    noun, noun_en, g = rng.choice(THINGS)
    col = rng.choice(COLOURS)
    pm, pf, prep_en, key = rng.choice(PREPS)
    col_it, prep, gender = (col[1], pf, "feminine") if g == "f" else (col[0], pm, "masculine")
    answer = f"{subj} {prep} {noun} {col_it}"
    words = [(prep_en, prep), (noun_en, noun), (col[2], col_it)]
    wrong = [f"{subj} {prep} {col_it} {noun}", f"{subj} {prep} {noun} {col[0] if g == 'f' else col[1]}",
             f"{subj} {prep.rsplit(' ', 1)[0]} {noun} {col_it}", f"{subj} {prep} ... how do I say {col[2]}"]
    f = dict(prep=prep, prep_en=prep_en, noun=noun, noun_en=noun_en, col=col_it, col_en=col[2], answer=answer, gender=gender)
    convo = [rng.choice(OPENERS).format(**f)]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        en, it = rng.choice(words)
        student = rng.choice(ASKS).format(en) if rng.random() < 0.6 else rng.choice(GUESSES).format(rng.choice(wrong))
        convo += [student, rng.choice(HINTS).format(en, it)]
    guess = rng.random() < 0.55
    convo.append(rng.choice(GUESSES).format(rng.choice(wrong)) if guess else rng.choice(ASKS).format(rng.choice(words)[0]))
    chosen = rng.sample(RESPONSES, rng.choice([3, 3, 3, 3, 2, 4]))
    return {"past_convo": convo, "img": f'"pictures/{subj_en}_{key}_{col[2]}_{noun_en}.png"', "prep": prep, "engPrep": prep_en,
            "obj": noun, "engObj": noun_en, "color": col_it, "engColor": col[2],
            "grammarRules": _grammar_rules(rng, prep.split()[-1], noun, gender, rng.choice(["json", "json", "extra", "text"])),
            "studentActions": ["True", "False", "False", "False"] if guess else ["False", "True", "False", "False"],
            "tutorResponses": [t.format(**f) for _, t in chosen], "tutorActions": [[c == "1" for c in a] for a, _ in chosen],
            "tutorKeys": []}

# --- ManyThings: English<TAB>Italian<TAB>attribution, lengths from 2 to 25 words ------------------------------
PRONOUNS = [("I", "io", 0), ("You", "tu", 1), ("He", "lui", 2), ("She", "lei", 2), ("We", "noi", 3), ("They", "loro", 5)]
VERBS = [(v.split("|"), forms.split(), _pairs(objs)) for v, forms, objs in [
    ("read|reads", "leggo leggi legge leggiamo leggete leggono", "a book|un libro; the newspaper|il giornale; an old letter|una vecchia lettera"),
    ("write|writes", "scrivo scrivi scrive scriviamo scrivete scrivono", "a postcard|una cartolina; a short story|un racconto breve; the shopping list|la lista della spesa"),
    ("buy|buys", "compro compri compra compriamo comprate comprano", "bread|il pane; some apples|delle mele; a new bicycle|una bicicletta nuova"),
    ("cook|cooks", "cucino cucini cucina cuciniamo cucinate cucinano", "pasta|la pasta; a vegetable soup|una zuppa di verdure; dinner|la cena"),
    ("drink|drinks", "bevo bevi beve beviamo bevete bevono", "coffee|il caffè; cold water|acqua fredda; a glass of milk|un bicchiere di latte"),
    ("wash|washes", "lavo lavi lava laviamo lavate lavano", "the dishes|i piatti; the car|la macchina; the windows|le finestre"),
    ("open|opens", "apro apri apre apriamo aprite aprono", "the door|la porta; a parcel|un pacco; the shutters|le persiane"),
    ("study|studies", "studio studi studia studiamo studiate studiano", "history|la storia; the map|la mappa; the municipal regulations|i regolamenti comunali"),
    ("examine|examines", "esamino esamini esamina esaminiamo esaminate esaminano",
     "the ancient manuscripts|gli antichi manoscritti; the contractual clauses|le clausole contrattuali; the sediment samples|i campioni di sedimento"),
    ("restore|restores", "restauro restauri restaura restauriamo restaurate restaurano",
     "the frescoes|gli affreschi; a baroque altarpiece|una pala d'altare barocca; the wooden ceiling|il soffitto ligneo")]]
PLACES = _pairs("at home|a casa; in the garden|in giardino; at the station|alla stazione; in the kitchen|in cucina; at school|a scuola; "
                "in the old library|nella vecchia biblioteca; in the dilapidated farmhouse|nel casolare diroccato; at the excavation site|nello scavo archeologico")
TIMES = _pairs("today|oggi; every morning|ogni mattina; on Sundays|la domenica; in the evening|la sera; "
               "during the summer holidays|durante le vacanze estive; with meticulous attention|con meticolosa attenzione")
ADVERBS = _pairs("slowly|lentamente; often|spesso; reluctantly|malvolentieri; scrupulously|scrupolosamente; unexpectedly|inaspettatamente")
LINKS = _pairs("because|perché; although|anche se; while|mentre; but|ma; so|quindi")
USERS = ["lucia_v", "tomwrites", "Orsetto", "pietro88", "maple_k", "gatta_nera", "jbrook", "Vesuvio", "annalisa", "k_okafor"]

def _clause(rng, size: int) -> tuple:
    "An English clause and its Italian translation; `size` 0..3 adds an object, a place, an adverb and a time."
    en_p, it_p, person = rng.choice(PRONOUNS)
    (base, third), forms, objects = rng.choice(VERBS)
    en, it = [en_p, third if person == 2 else base], [it_p, forms[person]]
    if size >= 3:
        adv = rng.choice(ADVERBS); en.insert(1, adv[0]); it.append(adv[1])
    for n, pool in ((1, objects), (2, PLACES), (3, TIMES)):
        if size >= n:
            e, i = rng.choice(pool); en.append(e); it.append(i)
    return " ".join(en), " ".join(it)

def _sentence_pair(rng) -> tuple:
    "An English-Italian pair of 2 to 25 words: one clause, or two joined by a connective."
    size = rng.choice([0, 1, 1, 2, 2, 3, 4, 5])
    en, it = _clause(rng, min(size, 3))
    if size >= 4:
        (l_en, l_it), (e2, i2) = rng.choice(LINKS), _clause(rng, size - 2)
        en, it = f"{en}, {l_en} {e2[0].lower() + e2[1:] if not e2.startswith('I ') else e2}", f"{it}, {l_it} {i2}"
    return en + ".", it[0].upper() + it[1:] + "."

# --- MERLIN: rated Italian learner letters with a tokenised target hypothesis -------------------------------
MERLIN_PLAN = {"A1": 6, "A2": 9, "B1": 9, "B2": 6}
TASKS = {"A1": ["introduce yourself to a pen friend", "write a postcard from your holiday"],
         "A2": ["thank a friend for a birthday present", "ask a friend to water your plants"],
         "B1": ["tell a friend about your new job", "complain to a travel agency about a trip"],
         "B2": ["write to a newspaper about city traffic", "apply for a job in a bookshop"]}
CLAUSES = {
    "A1": ["abito a {city} con la mia famiglia", "ho {age} anni", "mi piace molto la musica", "lavoro in un negozio",
           "la mia casa è piccola", "il sabato gioco a calcio", "studio l'italiano da un anno", "mio fratello si chiama {name}",
           "qui fa molto caldo", "il mare è bello", "mangio la pizza ogni giorno", "ho un cane nero"],
    "A2": ["ieri sono andato al mercato con mia sorella", "il tuo regalo mi è piaciuto moltissimo", "domani parto per una settimana",
           "le piante sono sul balcone della cucina", "devi dare l'acqua ogni due giorni", "la chiave è sotto il vaso rosso",
           "abbiamo mangiato in un ristorante vicino alla stazione", "mi dispiace ma non posso venire sabato"],
    "B1": ["da lunedì lavoro in un ufficio turistico del centro", "i colleghi sono gentili e mi aiutano quando ho un problema",
           "l'albergo non corrispondeva alla descrizione del catalogo", "la camera era rumorosa e il bagno era sporco",
           "vorrei ricevere un rimborso almeno parziale", "la guida arrivava sempre in ritardo agli appuntamenti",
           "secondo me l'esperienza è stata utile per il mio futuro", "spero di migliorare il mio italiano con i clienti"],
    "B2": ["il traffico nelle ore di punta è diventato ormai insopportabile per chi abita in periferia",
           "bisognerebbe potenziare i trasporti pubblici e incentivare l'uso della bicicletta",
           "l'amministrazione comunale dovrebbe ascoltare le proposte dei cittadini più attivi",
           "ritengo di possedere le competenze necessarie per consigliare i lettori più esigenti",
           "durante il tirocinio ho gestito autonomamente gli ordini e l'inventario della libreria",
           "sarei disponibile a un colloquio conoscitivo in qualsiasi momento della settimana"]}
CONNECTIVES = {"A1": [". "], "A2": [". ", " e ", " ma "], "B1": [", perché ", ", quindi ", " e ", ". Inoltre "],
               "B2": [", anche se ", ", mentre ", "; di conseguenza ", ", poiché "]}
SHAPE = {"A1": (3, 1), "A2": (4, 2), "B1": (5, 2), "B2": (6, 3)}  # sentences, clauses per sentence
ERRORS = {"è": "e", "perché": "perche", "anni": "ani", "anche": "anke", "abbiamo": "abiamo", "della": "dela", "gli": "li",
          "piaciuto": "piaciuta", "ogni": "ogno", "sono": "so", "vorrei": "vorei", "sempre": "sempere", "bisognerebbe": "bisognarebbe"}
ERROR_RATE = {"A1": 0.6, "A2": 0.45, "B1": 0.3, "B2": 0.15}
NAMES = ["Giulia", "Paola", "Chiara", "Marco", "Stefano", "Luca"]
LEVELS = ["A1", "A2", "B1", "B2", "C1", "C2"]

def _tokenise(text: str) -> str:
    "MERLIN's target-hypothesis style: one line, punctuation and elided articles split off."
    return " ".join(re.sub(r"([,.;:!?])", r" \1 ", re.sub(r"(\w')(?=\w)", r"\1 ", text)).split())

def _merlin_file(rng, aid: str, level: str) -> str:
    "One meta_ltext_THs file: metadata, ratings, learner text with errors, and its correction."
    n_sent, n_clause = SHAPE[level]
    fill = dict(city=rng.choice(["Graz", "Brno", "Linz", "Plzeň"]), age=rng.randint(16, 60), name=rng.choice(NAMES))
    sents = []
    for _ in range(rng.randint(n_sent, n_sent + 2)):
        pool = CLAUSES[level] + (CLAUSES[LEVELS[LEVELS.index(level) - 1]] if level != "A1" else [])
        s = rng.choice(pool).format(**fill)
        for _ in range(rng.randint(1, n_clause) - 1): s += rng.choice(CONNECTIVES[level]) + rng.choice(pool).format(**fill)
        sents.append(re.sub(r"(^|[.] )(\w)", lambda m: m[1] + m[2].upper(), s) + ".")
    friend, me = rng.choice(NAMES), rng.choice(NAMES)
    correct = [f"{'Gentile' if level in ('B1', 'B2') else 'Cara' if friend[-1] == 'a' else 'Caro'} {friend},", *sents, f"Un saluto, {me}"]
    wrong = lambda w: ERRORS[w] if w in ERRORS and rng.random() < ERROR_RATE[level] else w
    learner = "\n".join(" ".join(wrong(w) for w in line.split(" ")) for line in correct)
    rank = LEVELS.index(level)
    sub = [LEVELS[max(0, min(5, rank + rng.choice([-1, 0, 0, 1])))] for _ in range(6)]
    task = rng.choice(TASKS[level])
    return (f"METADATA\n\nGeneral:\nAuthor ID: {aid}\nTest language: Italian\nCEFR level of test: {LEVELS[min(3, rank + rng.randint(0, 1))]}\n"
            f"Task : {task} - ID: {aid[:4]}_0{TASKS[level].index(task) + 1}0{rank + 1}01\nMother tongue: {rng.choice(['German', 'Czech', 'Hungarian', 'Polish'])}\n"
            f"Age: {fill['age']}\nGender: {rng.choice(['female', 'male'])}\n\nRating:\nOverall CEFR rating: {level}\n"
            f"Grammatical accuracy: {sub[0]}\nOrthography: {sub[1]}\nVocabulary range: {sub[2]}\nVocabulary control: {sub[3]}\n"
            f"Coherence/Cohesion: {sub[4]}\nSociolinguistic appropriateness: {sub[5]}\n\n{'-' * 16}\n\nLearner text: \n\n{learner}\n\n"
            f"{'-' * 16}\n\nTarget hypothesis 1: \n\n{_tokenise(' '.join(correct))}\n\n{'-' * 16}\n\nNo target hypothesis 2 available.\n")

def _write(path: Path, text: str) -> Path:
    "Write `text` as UTF-8 with LF line ends, creating folders."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path

def write_unseen_corpora(root, seed: int = 0) -> dict:
    "Write small corpora in the real CIMA, ManyThings and MERLIN formats under root; return their paths."
    root, rng = Path(root), random.Random(seed)
    data = {"prepDataset": {str(i): _cima_exchange(rng) for i in range(60)}, "shapeDataset": {}}
    cima = _write(root / "cima" / "dataset.json", json.dumps(data, ensure_ascii=False, indent=1))
    pairs, seen = [], set()
    while len(pairs) < 400:
        en, it = _sentence_pair(rng)
        if it.lower() not in seen and len(en.split()) <= 25: seen.add(it.lower()); pairs.append((en, it))
    ids = rng.sample(range(100_000, 9_999_999), 2 * len(pairs))
    lines = [f"{en}\t{it}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{ids[2 * i]} ({rng.choice(USERS)}) & #{ids[2 * i + 1]} ({rng.choice(USERS)})"
             for i, (en, it) in enumerate(sorted(pairs, key=lambda p: (len(p[0]), p)))]
    manythings = _write(root / "manythings" / "ita.txt", "\n".join(lines) + "\n")
    aids = rng.sample(range(10**6, 10**7), sum(MERLIN_PLAN.values()))
    plan = [lvl for lvl, n in MERLIN_PLAN.items() for _ in range(n)]
    for aid, level in zip(aids, plan):
        name = f"{rng.choice(['1402', '1418', '1436'])}_{aid:07d}"
        _write(root / "merlin" / f"{name}.txt", _merlin_file(rng, name, level))
    return {"cima": cima, "tatoeba": [manythings], "merlin": root / "merlin"}  # collect_questions(**paths) reads them all
