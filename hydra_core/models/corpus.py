"""The text the tiny presets' BPE vocabularies are trained on.

Nothing can be downloaded, so the vocabulary is learnt here from a little of each kind of text a
recipe feeds a model: prose, code, numbers, sums like the arithmetic task's, and chat turns. Its
merges only make sequences shorter; a byte-level BPE encodes any text whatever it was trained on.
"""

from __future__ import annotations

PASSAGES = (
    """The river was low that autumn, and the old ferry ran only twice a day. People who had
crossed it every morning for twenty years now walked the long way round by the bridge, and they
complained about it to anyone who would listen. The ferryman did not mind. He mended his nets,
painted the hull a colour he called "harbour green", and told the children stories about the
winter the water froze so hard that a horse and cart went over the ice.""",
    """A good recipe is a small program. Preheat the oven to 180 degrees. Whisk two eggs with 100 g
of sugar until pale, then fold in 120 g of flour and a pinch of salt. Pour the batter into a
buttered tin and bake for 25 to 30 minutes, until a knife comes out clean. Let it cool before
you slice it; patience is the ingredient most cooks forget.""",
    """Reinforcement learning from human feedback starts from a model that can already follow
instructions. A reward model learns which of two answers people prefer, and the policy is then
trained to produce answers with a higher reward, while a penalty keeps it close to where it
started. Training is expensive because several models must be held in memory at once: the policy,
a reference copy, the reward model and a value function.""",
    """def fibonacci(n: int) -> list[int]:
    \"\"\"The first n Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, word):
        self.counts[word] = self.counts.get(word, 0) + 1
        return self.counts[word]


for i, value in enumerate(fibonacci(10)):
    print(f"{i}: {value}")
""",
    """{"name": "experiment-42", "learning_rate": 0.0003, "batch_size": 16, "steps": 1000,
 "tags": ["baseline", "lora"], "enabled": true, "notes": null}
if (x > 0 && y < 10) { return x * y; } else { return -1; }
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;""",
    """On 14 March 2024 the station recorded 3.7 mm of rain, a maximum of 12.5 degrees and a
minimum of -1.2. The population grew from 8,430 in 1990 to 11,275 in 2020, about 1.0% a year.
Call 555-0142 before 9:30 am. The invoice totals $1,299.99, due in 30 days; item 7 of 12 is
back-ordered. Pi is roughly 3.14159 and e is roughly 2.71828.""",
    """23+48=71 15+27=42 60+39=99 8+5=13 44+44=88 19+81=100 7*8=56 12*12=144 100-37=63
81/9=9 2^10=1024 (3+4)*5=35 x = 2y + 1 a + b = c 0.5 + 0.25 = 0.75""",
    """User: Can you help me write an email to my landlord about the broken heater?
Assistant: Of course. Here is a short draft: "Dear Ms. Patel, the heater in flat 4B has not worked
since Monday. Could someone look at it this week? Thank you, Sam."
User: Thanks! Can you make it a little more formal?
Assistant: Certainly. I would write: "I am writing to report that the heating in my flat has
stopped working. I would be grateful if a repair could be arranged at your earliest convenience."
User: What is 23 plus 48?
Assistant: 23 plus 48 is 71.
System: You are a helpful assistant. Answer briefly and honestly.
Human: Why is the sky blue?
Assistant: Sunlight scatters off the air, and blue light scatters the most, so the sky looks blue.""",
    """Why did the experiment fail? Nobody knew at first. The logs showed nothing unusual: the loss
fell, then rose, then fell again. It wasn't the data, and it wasn't the code, or so we thought. In
the end it was a single flag, left on by mistake, that doubled the learning rate halfway through.
We fixed it, re-ran everything, and the curves looked just as they should.""",
    """- Read the question carefully.
- Think step by step, and check each step.
- Give the final answer on its own line.
# Notes
## Install
pip install hydra-rlhf && hydra-rlhf --help
Café, naïve, résumé, Zürich, São Paulo; 東京 and Москва.""",
)


def corpus_lines() -> list[str]:
    """The passages and the task's two-digit sums, one line each, always in the same order."""
    sums = [f"{a}+{b}={a + b}" for a in range(10, 100, 3) for b in range(10, 100, 7)]
    return [line for passage in PASSAGES for line in passage.splitlines()] + sums
