"""Deep Q-learning: a network learns the shortest way out of a maze.

The environment, written here in NumPy, is a 7x7 grid with walls: the agent
starts in a random free cell, moves up, down, left or right (into a wall:
it stays), and gets reward 1 on reaching the goal, which ends the episode,
and 0 otherwise; an episode also stops after 50 moves. With discount 0.9,
the optimal policy takes a shortest path from every cell.

examples/dqn.dl holds the Q-network and its target network; this loop plays
epsilon-greedy episodes into a replay memory, trains `fit` on random batches
of it, and copies q's weights into the target network every few hundred
updates (`prog.params` are live arrays). Figures: the share of free cells
from which the greedy policy reaches the goal in the fewest moves (1.0 is
the optimal policy), and the training time.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

import dlc

HERE = Path(__file__).parent
MAZE = ["......#",
        ".####.#",
        ".#....#",
        ".#.##..",
        "...#.#.",
        "##.#.#.",
        "G..#...",
        ]
MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])
MAX_MOVES = 50


class Maze:
    def __init__(self, rows: list[str]):
        self.walls = np.array([[c == "#" for c in row] for row in rows])
        self.goal = next((i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if c == "G")
        self.free = [(i, j) for i, j in np.argwhere(~self.walls) if (i, j) != self.goal]
        self.cells = self.walls.size

    def step(self, cell: tuple[int, int], action: int) -> tuple[tuple[int, int], float, bool]:
        i, j = np.array(cell) + MOVES[action]
        if not (0 <= i < self.walls.shape[0] and 0 <= j < self.walls.shape[1]) or self.walls[i, j]:
            i, j = cell
        reached = (i, j) == self.goal
        return (int(i), int(j)), float(reached), reached

    def encode(self, cells) -> np.ndarray:
        """States as the network reads them: each cell one-hot."""
        x = np.zeros((len(cells), self.cells), np.float32)
        x[np.arange(len(cells)), [i * self.walls.shape[1] + j for i, j in cells]] = 1
        return x

    def distances(self) -> dict[tuple[int, int], int]:
        """Fewest moves to the goal from each free cell (breadth first)."""
        dist, frontier = {self.goal: 0}, deque([self.goal])
        while frontier:
            cell = frontier.popleft()
            for prev in self.free:
                if prev not in dist and any(self.step(prev, a)[0] == cell for a in range(4)):
                    dist[prev] = dist[cell] + 1
                    frontier.append(prev)
        return dist


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", episodes: int = 400,
          batch: int = 32, memory: int = 10000, sync_every: int = 200) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    maze = Maze(MAZE)
    prog = dlc.compile(HERE / "dqn.dl", seed=seed, target=target)
    q_params = [name for name in prog.params if not name.startswith("target.")]

    def sync_target():
        for name in q_params:
            prog.params[f"target.{name}"][...] = prog.params[name]

    shortest = maze.distances()

    def optimal_share() -> float:
        """The share of free cells from which the greedy policy takes a
        shortest path to the goal."""
        optimal = 0
        for start in maze.free:
            cell, moves = start, 0
            while cell != maze.goal and moves <= shortest[start]:
                action = int(prog.run("q", s=maze.encode([cell]))["values"].argmax())
                cell, _, _ = maze.step(cell, action)
                moves += 1
            optimal += cell == maze.goal and moves == shortest[start]
        return optimal / len(maze.free)

    replay: deque = deque(maxlen=memory)
    sync_target()
    updates = 0
    t0 = time.perf_counter()
    for episode in range(1, episodes + 1):
        explore = max(0.1, 1 - episode / (episodes / 2))  # epsilon: 1 down to 0.1 by half way
        cell = maze.free[rng.integers(len(maze.free))]
        for _ in range(MAX_MOVES):
            if rng.random() < explore:
                action = int(rng.integers(4))
            else:
                action = int(prog.run("q", s=maze.encode([cell]))["values"].argmax())
            after, reward, done = maze.step(cell, action)
            replay.append((cell, action, reward, after, done))
            cell = after
            if len(replay) >= batch:
                picked = [replay[k] for k in rng.integers(len(replay), size=batch)]
                s, a, r, s2, d = zip(*picked)
                prog.train("fit", s=maze.encode(s), a=np.int32(a)[:, None], r=np.float32(r)[:, None],
                           s2=maze.encode(s2), done=np.float32(d)[:, None])
                updates += 1
                if updates % sync_every == 0:
                    sync_target()
            if done:
                break
        if verbose and episode % 50 == 0:
            print(f"episode {episode:4d}  epsilon {explore:.2f}  updates {updates:5d}  "
                  f"greedy policy optimal from {optimal_share():.3f} of the cells")
    figures = {"seconds": time.perf_counter() - t0, "optimal": optimal_share(), "updates": updates}
    if verbose:
        print(f"trained {episodes} episodes ({updates} updates) in {figures['seconds']:.2f} s; the greedy "
              f"policy takes a shortest path from {figures['optimal']:.3f} of {len(maze.free)} cells")
    return figures
