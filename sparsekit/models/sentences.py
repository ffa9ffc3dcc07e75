"""Built-in evaluation sentences for sentence-embedding models.

A pruned sentence-embedding model (all-MiniLM-L6-v2 by default) is compared
with its dense original on this set: how close the pruned embeddings stay to
the dense ones, and how well each sentence keeps its nearest neighbours.

The 240 sentences were written for this project. They fall into 20 topic
clusters of 12 sentences each, so that nearest-neighbour structure means
something: sentences within a topic are related without being near-duplicates.
Each topic has 4 short (4-9 words), 4 medium (10-20 words) and 4 long
(21-45 words) sentences.

``SENTENCES`` holds the text; ``TOPICS`` is aligned with it, giving each
sentence's topic label (used, for example, to colour plots).
"""
from __future__ import annotations

_BY_TOPIC: dict[str, tuple[str, ...]] = {
    "cooking": (
        "Simmer the tomato sauce for twenty minutes.",
        "Fresh basil makes every pasta taste better.",
        "Never crowd the pan when searing meat.",
        "How long should bread dough rise?",
        "A sharp knife is safer than a dull one because it needs less force.",
        "Roasting the garlic first gives the soup a sweet, mellow depth of flavor.",
        "She folded the beaten egg whites into the batter to keep the cake light.",
        "Salt the pasta water generously, until it tastes roughly like the sea.",
        "The recipe calls for 250 grams of flour, two eggs, a pinch of salt, and enough milk "
        "to make a smooth batter that coats the back of a spoon.",
        "When caramelizing onions, keep the heat low and be patient, because rushing them will "
        "burn the sugars before they have a chance to turn deep golden brown.",
        "My grandmother always said that \"a good stock is the foundation of a good kitchen,\" "
        "and she kept a pot of bones simmering on the stove every Sunday.",
        "Resting a roast for ten minutes after it leaves the oven lets the juices settle back "
        "into the meat, so less of them spill onto the cutting board when you slice it.",
    ),
    "football": (
        "The striker scored twice in the second half.",
        "Our goalkeeper saved a late penalty.",
        "The referee showed him a red card.",
        "Who won the cup final last year?",
        "The coach switched to a back three to stop their wingers from getting behind us.",
        "Fans sang for ninety minutes even though the home team was losing 3-0.",
        "A well-timed offside trap can frustrate even the fastest forwards in the league.",
        "The young midfielder signed a five-year contract with the club on Friday.",
        "After a goalless first half, the visitors pressed higher up the pitch, won the ball "
        "near the box, and curled a shot into the top corner that left the keeper rooted to the spot.",
        "Modern clubs track every player's sprint distance, heart rate, and passing accuracy "
        "during training, hoping that the data will help them avoid injuries late in the season.",
        "The match went to extra time and then to a penalty shootout, where the underdogs held "
        "their nerve and converted all five of their kicks to reach the semi-finals.",
        "Scouts watched the teenager for an entire season before recommending him, noting his "
        "vision, his calm first touch, and his habit of always checking his shoulder before "
        "receiving a pass.",
    ),
    "astronomy": (
        "Jupiter is bright in the evening sky.",
        "The Andromeda galaxy is slowly approaching us.",
        "A full moon washes out faint stars.",
        "Light from the Sun takes eight minutes to arrive.",
        "Astronomers detected a planet orbiting a red dwarf star about forty light-years away.",
        "A supernova can briefly outshine the entire galaxy that contains its exploding star.",
        "Saturn's rings are made mostly of ice particles ranging from dust to boulders.",
        "Through a small telescope, you can see the four largest moons of Jupiter.",
        "When a massive star runs out of fuel, its core collapses under gravity, and what "
        "remains may become a neutron star or, if enough mass is left, a black hole.",
        "The Milky Way contains somewhere between 100 and 400 billion stars, and on a clear "
        "night far from city lights you can see its faint band stretching across the sky.",
        "Astronomers measure the distance to nearby stars using parallax, watching how their "
        "positions shift slightly against the background as the Earth travels around the Sun.",
        "Meteor showers happen when our planet passes through the trail of dust left behind by "
        "a comet, and the Perseids in August are one of the most reliable displays of the year.",
    ),
    "programming": (
        "The function returns None on invalid input.",
        "Always write tests before refactoring legacy code.",
        "This loop never terminates when the list is empty.",
        "Why does the build fail on Windows?",
        "A hash map gives constant average lookup time, but its memory overhead can be significant.",
        "She replaced the nested loops with a single dictionary lookup and the script ran fifty "
        "times faster.",
        "Version control lets a team experiment on branches without breaking the main code.",
        "The compiler warned about an unused variable on line 42 of the parser.",
        "Race conditions are notoriously hard to debug because they depend on the precise timing "
        "of threads, so a program may pass a thousand test runs and then fail once in production.",
        "Before optimizing anything, profile the program to find where it actually spends its "
        "time, since intuition about performance bottlenecks is wrong surprisingly often.",
        "A good code review focuses on correctness, readability, and maintainability rather than "
        "personal style, and it leaves the author with clear suggestions instead of vague complaints.",
        "The team moved their service from a single large server to a set of small containers, "
        "which made deployments faster but introduced new problems with logging and network latency.",
    ),
    "finance": (
        "Interest rates rose again this quarter.",
        "Diversification reduces the risk of a portfolio.",
        "The stock fell 12% after earnings.",
        "Should I pay off debt or invest?",
        "Compound interest means your savings earn returns on the returns they have already earned.",
        "The central bank raised rates to cool inflation without triggering a recession.",
        "Index funds track the whole market and usually charge much lower fees than active funds.",
        "A company's balance sheet lists its assets, liabilities, and shareholder equity at a "
        "single moment.",
        "If you invest 100 dollars a month for thirty years at an average return of seven "
        "percent, compounding can turn modest contributions into a surprisingly large sum by retirement.",
        "Bond prices tend to fall when interest rates rise, because newly issued bonds offer "
        "higher yields and make the older, lower-paying ones less attractive to buyers.",
        "Financial advisers often recommend keeping an emergency fund that covers three to six "
        "months of living expenses in an account you can reach quickly without selling investments.",
        "The startup raised its second round of venture capital at a higher valuation, but the "
        "founders gave up another fifth of the company to secure the money.",
    ),
    "medicine": (
        "The patient's fever broke overnight.",
        "Wash your hands before touching the wound.",
        "Antibiotics do not work against viral infections.",
        "The doctor ordered a chest X-ray.",
        "Regular exercise lowers blood pressure and reduces the risk of heart disease.",
        "The nurse checked his pulse, temperature, and oxygen levels every four hours.",
        "Vaccines train the immune system to recognize a pathogen before a real infection occurs.",
        "Chronic sleep deprivation can weaken memory, mood, and the body's ability to fight illness.",
        "Clinical trials usually compare a new drug against a placebo or an existing treatment, "
        "and neither the patients nor the doctors know who received which until the study ends.",
        "After the surgery, she spent two days in the hospital and then six weeks of physical "
        "therapy learning to walk without pain on her rebuilt knee.",
        "Doctors warn that taking antibiotics when they are not needed helps bacteria evolve "
        "resistance, which could make common infections much harder to treat in the future.",
        "A stroke happens when blood flow to part of the brain is blocked or a vessel bursts, "
        "and getting treatment within the first few hours greatly improves the chances of recovery.",
    ),
    "gardening": (
        "Tomatoes need at least six hours of sun.",
        "Water the seedlings early in the morning.",
        "Slugs ate every lettuce in the bed.",
        "When should I prune the roses?",
        "Adding compost improves the soil's structure and helps it hold moisture during dry spells.",
        "Plant garlic cloves in autumn, pointed end up, about five centimeters deep.",
        "Mulching around the shrubs keeps weeds down and protects the roots from frost.",
        "Bees visited the lavender all afternoon, moving from one purple spike to the next.",
        "Rotating crops between beds each year helps prevent soil diseases from building up, "
        "because the pests that attack potatoes or cabbages lose their host when a different "
        "family is planted there.",
        "The community garden divides its land into thirty small plots, and each family grows "
        "whatever it likes as long as it keeps the paths clear and shares the water fairly.",
        "If the leaves on your tomato plants turn yellow from the bottom up, the soil may be "
        "short of nitrogen, or you may simply be watering them too often.",
        "She started the peppers indoors under grow lights in February, hardened them off on "
        "the porch for a week, and finally moved them into the raised bed in late May.",
    ),
    "music": (
        "The violinist tuned her strings before the concert.",
        "That chorus gets stuck in my head.",
        "The drummer kept perfect time all night.",
        "Jazz rewards careful listening.",
        "He practiced scales for an hour each morning before working on the sonata.",
        "The orchestra rehearsed the final movement three times before the conductor was satisfied.",
        "A minor key often sounds sad, while a major key tends to feel bright and open.",
        "The band recorded their first album in a converted barn over two weeks.",
        "Learning to read sheet music takes patience, but once you understand how notes, rests, "
        "and time signatures fit together, you can play pieces you have never heard before.",
        "The singer's voice cracked on the high note during the second verse, yet the audience "
        "cheered even louder, as if the small mistake made the performance feel more honest.",
        "A string quartet consists of two violins, a viola, and a cello, and composers like "
        "Haydn and Beethoven wrote some of their most personal music for this small ensemble.",
        "When the guitarist broke a string halfway through the solo, he kept playing on the "
        "remaining five and bent the notes so smoothly that most of the crowd never noticed.",
    ),
    "travel": (
        "Our flight was delayed by three hours.",
        "Pack light for a weekend trip.",
        "The hostel was cheap and surprisingly clean.",
        "Do I need a visa for Japan?",
        "We took the night train across the mountains and woke up beside a quiet lake.",
        "Always keep a copy of your passport separate from the original when traveling abroad.",
        "The old town is best explored on foot, early in the morning before the crowds.",
        "Learning a few phrases in the local language makes strangers noticeably friendlier.",
        "We missed the last ferry back to the mainland, so we spent the night in a tiny "
        "guesthouse where the owner cooked us fish she had caught that afternoon.",
        "Backpacking through South America for four months taught him how to haggle, read bus "
        "timetables in Spanish, and sleep almost anywhere, including on a wooden bench at a "
        "border crossing.",
        "Travel insurance seemed like a waste of money until her suitcase vanished in transit "
        "and she needed to replace her clothes, her charger, and her medication within a single day.",
        "The guidebook recommended arriving at the temple at sunrise, and it was right: the "
        "stone courtyards were silent, the light was soft, and only a few monks were walking "
        "between the shrines.",
    ),
    "weather": (
        "It will rain heavily tomorrow afternoon.",
        "A thick fog rolled in overnight.",
        "The wind knocked over our fence.",
        "Is it going to snow this weekend?",
        "Forecasters expect temperatures to drop below freezing after midnight, so cover "
        "sensitive plants.",
        "The humidity made the summer afternoon feel much hotter than the thermometer suggested.",
        "A sudden thunderstorm flooded the streets and cut power to several neighborhoods.",
        "Clear skies and light winds are expected for the rest of the week.",
        "A cold front moving in from the northwest will bring gusty winds and scattered showers "
        "on Tuesday, followed by a sharp drop in temperature that could produce frost by "
        "Wednesday morning.",
        "Meteorologists use satellites, weather balloons, and thousands of ground stations to "
        "feed computer models that predict how the atmosphere will behave over the next several days.",
        "The hurricane strengthened rapidly over warm ocean water, reaching sustained winds of "
        "200 kilometers per hour before it made landfall along the coast late on Saturday night.",
        "After weeks of drought, the first real rain arrived in a slow, steady drizzle, and "
        "people stood in their doorways just to smell the wet earth and listen to it falling.",
    ),
    "history": (
        "The Roman Empire split into two halves.",
        "The printing press spread ideas across Europe.",
        "The Berlin Wall fell in 1989.",
        "Who built the first pyramids in Egypt?",
        "Archaeologists uncovered a Bronze Age settlement beneath a farmer's field last spring.",
        "The Industrial Revolution moved millions of people from farms into crowded factory towns.",
        "Medieval castles were designed to withstand long sieges with wells and stored grain.",
        "The treaty ended the war but left both sides deeply resentful for decades.",
        "Historians still debate why the Bronze Age civilizations of the eastern Mediterranean "
        "collapsed around 1200 BC, pointing to drought, earthquakes, invasions, and the "
        "breakdown of long trade networks.",
        "The Silk Road was not a single route but a web of caravan paths that carried silk, "
        "spices, paper, and ideas between China, Persia, and the cities of the Mediterranean.",
        "When the plague reached Europe in the fourteenth century, it killed perhaps a third of "
        "the population, and the resulting labor shortage gave surviving peasants new bargaining power.",
        "Letters and diaries written by ordinary soldiers often tell historians more about daily "
        "life during a war than the official reports written by generals far behind the front lines.",
    ),
    "law": (
        "The jury returned a unanimous verdict.",
        "The contract was signed by both parties.",
        "He pleaded not guilty to all charges.",
        "Can a landlord keep my deposit?",
        "The defendant is presumed innocent until the prosecution proves guilt beyond a "
        "reasonable doubt.",
        "Her lawyer argued that the evidence had been obtained without a valid search warrant.",
        "The appeals court overturned the ruling and sent the case back for a new trial.",
        "A will must usually be signed in front of two witnesses to be valid.",
        "The judge instructed the jurors to ignore the witness's last remark, reminding them "
        "that they must base their decision only on the evidence properly admitted during the trial.",
        "Copyright protects the specific expression of an idea, such as a novel or a song, but "
        "it does not give anyone ownership of the underlying idea itself.",
        "The two companies settled the patent dispute out of court, agreeing to share licensing "
        "fees rather than spend several more years and millions of dollars on litigation.",
        "Under the new regulation, employers must tell job applicants what personal data they "
        "collect, explain why they need it, and delete it within six months if the person is not hired.",
    ),
    "cars": (
        "The engine makes a strange knocking sound.",
        "Check the tire pressure once a month.",
        "Electric cars are quiet at low speeds.",
        "How often should I change the oil?",
        "The mechanic replaced the worn brake pads and resurfaced both front discs.",
        "A manual gearbox gives the driver more control but takes practice in city traffic.",
        "Hybrid cars recover energy during braking and store it in a battery.",
        "The dashboard warning light came on just as we reached the highway.",
        "Modern cars are packed with sensors that monitor everything from engine temperature to "
        "tire grip, and a single faulty wire can trigger a confusing cascade of warnings on the "
        "dashboard.",
        "Before buying a used car, ask for the service history, check underneath for rust, and "
        "take it for a test drive on both a quiet road and a busy motorway.",
        "Range anxiety is fading as charging networks grow, and many electric vehicles can now "
        "travel more than 400 kilometers on a single charge before they need to plug in.",
        "The vintage convertible had no power steering and a temperamental carburetor, but on a "
        "sunny Sunday afternoon its owner would not have traded it for any modern car.",
    ),
    "pets": (
        "Our cat sleeps on the warm laptop.",
        "The puppy chewed through my favorite shoes.",
        "Goldfish need more space than people think.",
        "Is chocolate really dangerous for dogs?",
        "Adopting an older dog from a shelter can be calmer than raising a puppy.",
        "The vet recommended a diet with less fat for our overweight beagle.",
        "Rabbits are social animals and usually do better when kept in pairs.",
        "Our parrot learned to imitate the sound of the microwave finishing.",
        "When we brought the kitten home, she hid under the sofa for two full days, but by the "
        "end of the week she was racing up and down the hallway at three in the morning.",
        "Training a dog works best with short, frequent sessions and immediate rewards, because "
        "the animal quickly links a treat or praise with the behavior that came just before it.",
        "Many people buy a hamster for a child without realizing that hamsters are nocturnal, "
        "so they sleep through the day and run noisily on their wheels all night long.",
        "The old sheepdog could no longer climb the stairs, so the family moved his bed into the "
        "kitchen, where he could still watch everyone come and go.",
    ),
    "climate": (
        "Global temperatures keep breaking records.",
        "Glaciers are retreating on every continent.",
        "Sea levels are rising along the coast.",
        "Can planting trees really slow warming?",
        "Burning coal, oil, and gas releases carbon dioxide that traps heat in the atmosphere.",
        "Warmer oceans absorb more carbon, which gradually makes the water more acidic for "
        "marine life.",
        "Many cities are planting trees and painting roofs white to reduce summer heat.",
        "The report warned that coral reefs could largely vanish if warming exceeds two degrees.",
        "Scientists reconstruct past climates by drilling deep cores from the Antarctic ice, "
        "where tiny bubbles of trapped air preserve samples of the atmosphere from hundreds of "
        "thousands of years ago.",
        "As Arctic sea ice melts, darker ocean water absorbs more sunlight instead of reflecting "
        "it, which warms the region further and speeds up the loss of even more ice.",
        "Farmers in some regions are already switching to drought-tolerant crops and changing "
        "their planting dates because the rainy seasons no longer arrive when their parents "
        "expected them.",
        "Reaching net zero emissions will require cleaner electricity, better-insulated "
        "buildings, and new ways to make steel and cement, along with changes in how people "
        "travel and eat.",
    ),
    "chess": (
        "White opened with the king's pawn.",
        "She castled early to protect her king.",
        "The knight fork won a rook.",
        "Is the Sicilian Defense good for beginners?",
        "Controlling the center of the board gives your pieces more room to move.",
        "He offered a draw after realizing the endgame could not be won.",
        "A bishop pair is often stronger than a bishop and knight in open positions.",
        "The grandmaster played twenty simultaneous games and lost only one of them.",
        "In the final round of the tournament, she sacrificed her queen for two minor pieces and "
        "a powerful attack, and her opponent resigned ten moves later when checkmate became "
        "unavoidable.",
        "Computer engines now play chess far better than any human, yet top players still study "
        "their suggestions carefully, because the machines often find moves that seem to break "
        "every classical principle.",
        "Beginners often move the same piece several times in the opening, while experienced "
        "players try to develop all their knights and bishops quickly before launching any attack.",
        "The endgame came down to a king and pawn against a lone king, and everything depended "
        "on whether the attacking king could reach the key square in front of the pawn.",
    ),
    "mathematics": (
        "Every even number greater than two is composite.",
        "The square root of 144 is 12.",
        "Prove that there are infinitely many primes.",
        "What is the derivative of sine?",
        "A triangle's interior angles always add up to 180 degrees in flat Euclidean geometry.",
        "Probability theory began with questions about gambling and games of chance in the 1600s.",
        "The Fibonacci sequence appears in the spiral patterns of sunflower seeds and pine cones.",
        "Matrices let you describe rotations, reflections, and scaling as simple multiplication.",
        "Euclid proved that there are infinitely many prime numbers by showing that if you "
        "multiply any finite list of primes together and add one, the result must have a new "
        "prime factor.",
        "Calculus lets us find the area under a curve by adding up infinitely many thin "
        "rectangles, an idea that Newton and Leibniz developed independently in the seventeenth century.",
        "The Pythagorean theorem states that in a right triangle, the square of the longest side "
        "equals the sum of the squares of the other two sides.",
        "Many students find proofs by induction strange at first, because you prove a statement "
        "for one case and then show that each case implies the next, and somehow that covers "
        "every number.",
    ),
    "fashion": (
        "Wide-leg trousers are back in style.",
        "She wore a red wool coat.",
        "Linen wrinkles easily but stays cool.",
        "Does navy really go with black?",
        "The designer's autumn collection mixed tailored jackets with soft, oversized knitwear "
        "in earthy tones.",
        "Fast fashion keeps prices low, but the clothes often fall apart after a few washes.",
        "A well-fitted suit matters far more than an expensive brand label.",
        "Models walked the runway in shoes made entirely from recycled plastic bottles.",
        "Vintage shops have become popular with young shoppers who want unique pieces, lower "
        "prices, and a smaller environmental footprint than buying new clothes from large chain "
        "stores every season.",
        "The tailor took in the waist of the dress, shortened the hem by three centimeters, and "
        "moved the buttons so that it fitted her perfectly for the wedding.",
        "Trends in fashion often return every twenty years or so, which is why the baggy jeans "
        "and chunky sneakers of the 1990s are suddenly appearing in shop windows again.",
        "Building a capsule wardrobe means choosing a small number of versatile items, such as a "
        "white shirt, dark jeans, and a simple jacket, that can be combined into many different outfits.",
    ),
    "education": (
        "The exam results come out next week.",
        "Homework was due before Monday's class.",
        "Our teacher read aloud every Friday.",
        "How do children learn to read?",
        "Smaller class sizes let teachers give each student more individual attention and feedback.",
        "The university added online courses so working adults could study in the evenings.",
        "Students remember material better when they test themselves instead of simply "
        "rereading notes.",
        "The school library extended its hours so pupils could revise for their final exams.",
        "Research on learning suggests that spreading study sessions over several weeks works "
        "much better than cramming the night before, because memories are strengthened each "
        "time they are retrieved.",
        "The new teacher turned her chemistry lessons into small experiments, and even students "
        "who had always hated science began staying after class to ask questions about what "
        "they had seen.",
        "In many countries, access to higher education still depends heavily on family income, "
        "so scholarships and public funding play a crucial role in giving talented students a "
        "fair chance.",
        "Learning a second language as an adult is harder than as a child, but regular "
        "conversation practice, patience, and a willingness to make mistakes can lead to real fluency.",
    ),
    "space flight": (
        "The rocket launched at dawn from Florida.",
        "Astronauts exercise daily to prevent muscle loss.",
        "The capsule splashed down in the Pacific.",
        "How do astronauts sleep in orbit?",
        "Reusable boosters that land upright have dramatically lowered the cost of reaching orbit.",
        "The International Space Station circles the Earth roughly every ninety minutes.",
        "Engineers delayed the launch after detecting a small leak in the fuel line.",
        "The rover drilled into Martian rock and sent back images of the sample.",
        "On the Apollo 11 mission in July 1969, Neil Armstrong stepped onto the Moon and said, "
        "\"That's one small step for man, one giant leap for mankind.\"",
        "Getting to Mars takes about seven months with current rockets, so mission planners must "
        "carefully calculate how much food, water, and oxygen the crew will need for the long journey.",
        "During reentry, the spacecraft's heat shield must survive temperatures above 1,500 "
        "degrees Celsius as friction with the atmosphere slows the vehicle from orbital speed.",
        "Living in microgravity for months causes bones to lose density and fluids to shift "
        "toward the head, which is why returning astronauts often need help walking during "
        "their first days back.",
    ),
}

SENTENCES: tuple[str, ...] = tuple(s for sents in _BY_TOPIC.values() for s in sents)
"""The evaluation sentences, grouped by topic in the order of ``TOPICS``."""

TOPICS: tuple[str, ...] = tuple(t for t, sents in _BY_TOPIC.items() for _ in sents)
"""Topic label of each sentence in ``SENTENCES`` (same length, same order)."""

del _BY_TOPIC
