//! `Dag`: stages as nodes (indices into `Pipeline::stages`), data and `after:`
//! references as edges from producer to consumer (petgraph).

use std::collections::{BTreeSet, VecDeque};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    topo: Vec<usize>,
}

impl Dag {
    /// Build from `n` nodes and `(producer, consumer)` edges. On a cycle,
    /// returns one cycle as a node path that starts and ends at the same node.
    pub fn build(n: usize, edges: &[(usize, usize)]) -> Result<Dag, Vec<usize>> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
        for &(a, b) in edges {
            graph.update_edge(nodes[a], nodes[b], ());
        }
        match toposort(&graph, None) {
            Ok(order) => Ok(Dag {
                topo: order.into_iter().map(|ix| graph[ix]).collect(),
                graph,
            }),
            Err(_) => {
                // Start the reported cycle at its first stage in manifest order.
                let mut cycle = find_cycle(&graph);
                cycle.pop();
                if let Some(min) = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &n)| n)
                    .map(|(i, _)| i)
                {
                    cycle.rotate_left(min);
                    cycle.push(cycle[0]);
                }
                Err(cycle)
            }
        }
    }

    /// Stages in an order where every stage comes after its dependencies;
    /// ties keep manifest order.
    pub fn topo(&self) -> Vec<usize> {
        // Kahn's algorithm with a min-heap on the index gives a stable order.
        let n = self.graph.node_count();
        let mut indeg: Vec<usize> = (0..n).map(|i| self.deps(i).len()).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut out = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            out.push(i);
            for d in self.dependents(i) {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        debug_assert_eq!(out.len(), self.topo.len());
        out
    }

    pub fn deps(&self, i: usize) -> Vec<usize> {
        self.neighbors(i, Direction::Incoming)
    }

    pub fn dependents(&self, i: usize) -> Vec<usize> {
        self.neighbors(i, Direction::Outgoing)
    }

    fn neighbors(&self, i: usize, dir: Direction) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), dir)
            .map(|ix| self.graph[ix])
            .collect();
        v.sort_unstable();
        v
    }

    /// `i` and everything it depends on, transitively.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Incoming)
    }

    /// `i` and everything that depends on it, transitively.
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Outgoing)
    }

    fn closure(&self, i: usize, dir: Direction) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut queue = VecDeque::from([i]);
        while let Some(n) = queue.pop_front() {
            for m in self.neighbors(n, dir) {
                if seen.insert(m) {
                    queue.push_back(m);
                }
            }
        }
        seen
    }

    pub fn edges(&self) -> Vec<(usize, usize)> {
        let mut e: Vec<_> = self
            .graph
            .raw_edges()
            .iter()
            .map(|e| (self.graph[e.source()], self.graph[e.target()]))
            .collect();
        e.sort_unstable();
        e
    }
}

fn find_cycle(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    for scc in tarjan_scc(graph) {
        let start = scc[0];
        let self_loop = graph.contains_edge(start, start);
        if scc.len() == 1 && !self_loop {
            continue;
        }
        if self_loop {
            return vec![graph[start], graph[start]];
        }
        // Shortest path from `start` back to itself inside the component.
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev = std::collections::HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for m in graph.neighbors(n) {
                if !members.contains(&m) {
                    continue;
                }
                if m == start {
                    let mut path = vec![graph[start]];
                    let mut cur = n;
                    while cur != start {
                        path.push(graph[cur]);
                        cur = prev[&cur];
                    }
                    path.push(graph[start]);
                    let last = path.len() - 1;
                    path[1..last].reverse();
                    return path;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                    e.insert(n);
                    queue.push_back(m);
                }
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_and_closures() {
        let dag = Dag::build(4, &[(0, 1), (1, 2), (0, 3)]).unwrap();
        assert_eq!(dag.topo(), vec![0, 1, 2, 3]);
        assert_eq!(dag.descendants(1), BTreeSet::from([1, 2]));
        assert_eq!(dag.ancestors(2), BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn cycle_path() {
        let cycle = Dag::build(4, &[(0, 1), (1, 2), (2, 3), (3, 1)]).unwrap_err();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
        // Each step is an edge.
        let edges = [(0, 1), (1, 2), (2, 3), (3, 1)];
        for w in cycle.windows(2) {
            assert!(edges.contains(&(w[0], w[1])), "{cycle:?}");
        }
        assert_eq!(Dag::build(1, &[(0, 0)]).unwrap_err(), vec![0, 0]);
    }
}
