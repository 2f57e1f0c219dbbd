import './base.css';
import './park.css';
import './terminal.css';
