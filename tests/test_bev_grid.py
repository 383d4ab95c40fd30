"""The BEV grid convention: rows along +y, columns along +x; cells and centres agree with the encoder's pillars."""

import torch

from bev_model.bev_encoder import pillar_points
from bev_model.bev_grid import BEVGrid
from bev_model.config import EncoderConfig


def test_cell_of_puts_a_point_right_and_ahead_in_the_right_row_and_column():
    grid = BEVGrid((-10.0, -20.0, -5.0, 10.0, 20.0, 3.0), H=40, W=20, Z=4)
    cells, inside = grid.cell_of(torch.tensor([[9.5, -19.5, -4.9], [0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]))
    assert cells[0].tolist() == [0, 0, 19]          # x near x_max -> last column; y near y_min -> first row
    assert cells[1].tolist() == [2, 20, 10]
    assert inside.tolist() == [True, True, False]    # x_max is outside (half-open cells)


def test_centres_map_back_to_their_own_cells_and_match_the_encoder_pillars():
    grid = BEVGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), H=5, W=7, Z=4)
    c = grid.centres()
    cells, inside = grid.cell_of(c)
    assert inside.all()
    iz, iy, ix = torch.meshgrid(torch.arange(4), torch.arange(5), torch.arange(7), indexing="ij")
    assert torch.equal(cells, torch.stack([iz, iy, ix], -1))
    enc = EncoderConfig(bev_h=5, bev_w=7, pc_range=grid.pc_range, num_z_anchors=4)
    pillars = pillar_points(enc).view(5, 7, 4, 3).permute(2, 0, 1, 3)  # -> [Z, H, W, 3]
    assert torch.allclose(pillars, c, atol=1e-5)
